"""CLI helpers without a server: config resolution, tables, ages, pod status."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubeling.api import kinds
from kubeling.cli import config
from kubeling.cli.errors import CliError
from kubeling.cli.printers import table_text
from kubeling.cli.resources import object_name, parse_targets, resolve_kind
from kubeling.cli.tables import pod_status, selector_text
from kubeling.cli.timefmt import human_duration
from kubeling.v1 import core_pb2, meta_pb2

# ------------------------------------------------------------------- config


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.resolve_server() == "localhost:6443"
    path = config.save_config("10.0.0.5:7000")
    assert path == tmp_path / ".kubeling" / "config"
    assert yaml.safe_load(path.read_text()) == {"server": "10.0.0.5:7000"}
    assert path.stat().st_mode & 0o777 == 0o600
    assert config.resolve_server() == "10.0.0.5:7000"
    monkeypatch.setenv("KUBELING_SERVER", "env-host:1234")
    assert config.resolve_server() == "env-host:1234"
    assert config.resolve_server("flag-host:9") == "flag-host:9"


def test_save_config_keeps_other_keys(tmp_path: Path) -> None:
    path = tmp_path / ".kubeling" / "config"
    path.parent.mkdir()
    path.write_text("server: old:1\nlab: {nodes: 3}\n")
    config.save_config("new:2")
    assert yaml.safe_load(path.read_text()) == {"server": "new:2", "lab": {"nodes": 3}}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("host", "host:6443"),
        ("host:80", "host:80"),
        (" grpc://host:80 ", "host:80"),
        ("[::1]", "[::1]:6443"),
        ("[::1]:7", "[::1]:7"),
    ],
)
def test_normalize_server(given: str, expected: str) -> None:
    assert config.normalize_server(given) == expected


def test_bad_config_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / ".kubeling" / "config"
    path.parent.mkdir()
    path.write_text("- just a list\n")
    with pytest.raises(CliError, match="must hold a mapping"):
        config.resolve_server()


# ---------------------------------------------------------------- resources


def test_kind_names() -> None:
    for text in ("po", "pods", "Pod", "pod"):
        assert resolve_kind(text) is kinds.POD
    assert resolve_kind("deployment.apps") is kinds.DEPLOYMENT
    assert object_name(kinds.DEPLOYMENT, "web") == "deployment.apps/web"
    assert object_name(kinds.ENDPOINT_SLICE, "s") == "endpointslice.discovery.k8s.io/s"
    with pytest.raises(CliError, match='resource type "bogus"'):
        resolve_kind("bogus")


def test_parse_targets() -> None:
    assert parse_targets(["deploy,svc"]) == ([kinds.DEPLOYMENT, kinds.SERVICE], [])
    listed, targets = parse_targets(["svc/a", "po/b"])
    assert listed == [] and [(t.kind, t.name) for t in targets] == [
        (kinds.SERVICE, "a"),
        (kinds.POD, "b"),
    ]
    _, targets = parse_targets(["pods", "a", "b"])
    assert [t.name for t in targets] == ["a", "b"]


# ------------------------------------------------------------------- output


def test_table_has_no_trailing_spaces_or_markup() -> None:
    text = table_text(["NAME", "MESSAGE"], [["a", "[bold]x[/bold]"], ["longer-name", ""]])
    assert text.splitlines() == [
        "NAME          MESSAGE",
        "a             [bold]x[/bold]",
        "longer-name",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5, "5s"), (119, "119s"), (125, "2m5s"), (600, "10m"), (3 * 3600 + 60, "3h1m"),
     (30 * 3600, "30h"), (3 * 86400, "3d"), (400 * 86400, "400d"), (3 * 365 * 86400, "3y")],
)  # fmt: skip
def test_human_duration(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def _pod(phase: str = "Running") -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.spec.containers.add(name="a")
    pod.status.phase = phase
    return pod


def test_pod_status_column() -> None:
    assert pod_status(_pod("Pending")) == "Pending"
    waiting = _pod()
    waiting.status.container_statuses.add(name="a").state.waiting.reason = "CrashLoopBackOff"
    assert pod_status(waiting) == "CrashLoopBackOff"
    exited = _pod()
    exited.status.container_statuses.add(name="a").state.terminated.exit_code = 2
    assert pod_status(exited) == "ExitCode:2"
    init = _pod("Pending")
    init.spec.init_containers.add(name="i")
    init.status.init_container_statuses.add(name="i").state.running.SetInParent()
    assert pod_status(init) == "Init:0/1"
    terminating = _pod()
    terminating.metadata.deletion_timestamp.GetCurrentTime()
    assert pod_status(terminating) == "Terminating"


def test_selector_text() -> None:
    selector = meta_pb2.LabelSelector(match_labels={"app": "web"})
    selector.match_expressions.add(key="tier", operator="In", values=["a", "b"])
    selector.match_expressions.add(key="old", operator="DoesNotExist")
    assert selector_text(selector) == "app=web,tier in (a,b),!old"
