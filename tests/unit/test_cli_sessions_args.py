"""Argument parsing of the session commands: port-forward's [LOCAL:]REMOTE, cp's
[NS/]POD:PATH, and the TYPE/NAME references port-forward, attach, exec and logs
take."""

from __future__ import annotations

import pytest

from kubeling.api.kinds import DEPLOYMENT, POD, SERVICE, STATEFUL_SET
from kubeling.cli.commands.cp import _remote
from kubeling.cli.commands.portforward import parse_port
from kubeling.cli.errors import CliError
from kubeling.cli.podselect import split_reference


def test_port_forward_ports() -> None:
    assert parse_port("8080") == (8080, "8080")
    assert parse_port("9000:80") == (9000, "80")
    assert parse_port(":80") == (0, "80")  # any free local port
    assert parse_port("9000:http") == (9000, "http")  # a named port
    for bad in ("x:80", "70000:80", "9000:"):
        with pytest.raises(CliError):
            parse_port(bad)


def test_cp_paths() -> None:
    assert _remote("web:/etc/hostname", "default") == ("default", "web", "/etc/hostname")
    assert _remote("other/web:/tmp/", "default") == ("other", "web", "/tmp/")
    for local in ("./file", "/abs/path", "file.txt", "dir/file"):
        assert _remote(local, "default") is None
    with pytest.raises(CliError):
        _remote("web:", "default")


def test_references() -> None:
    assert split_reference("web") == (POD, "web")
    assert split_reference("pod/web") == (POD, "web")
    assert split_reference("svc/web") == (SERVICE, "web")
    assert split_reference("deploy/web") == (DEPLOYMENT, "web")
    assert split_reference("statefulset/db") == (STATEFUL_SET, "db")
    for bad in ("deploy/", "nosuchkind/x", "configmap/x"):
        with pytest.raises(CliError):
            split_reference(bad)
