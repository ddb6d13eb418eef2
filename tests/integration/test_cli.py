"""The `kubeling` console script against a real master, run as a user would run it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from kubeling.client import Client
from kubeling.v1 import core_pb2
from tests.support.processes import MasterProcess

KUBELING = Path(sys.executable).parent / "kubeling"

APP = """\
apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
  labels: {{app: web}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports: [{{containerPort: 80}}]
        resources:
          requests: {{cpu: 0.5, memory: 64Mi}}
          limits: {{cpu: 1}}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: {ns}
spec:
  type: NodePort
  selector: {{app: web}}
  ports:
  - port: 80
    targetPort: 80
"""


def kubeling(
    master: MasterProcess | None,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    server = ["--server", master.address] if master is not None else []
    result = subprocess.run(
        [str(KUBELING), *server, *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def ok(master: MasterProcess | None, *args: str, stdin: str | None = None) -> str:
    result = kubeling(master, *args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return result.stdout


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def table(output: str) -> list[list[str]]:
    """Rows of a table split on runs of 2+ spaces (cells themselves have single spaces)."""
    import re

    return [re.split(r"\s{2,}", line.strip()) for line in output.strip().splitlines()]


def make_pod(name: str, namespace: str, labels: dict[str, str]) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = namespace
    pod.metadata.labels.update(labels)
    pod.spec.containers.add(name="main", image="busybox:1.36")
    return pod


# -------------------------------------------------------------------------- apply


def test_apply_creates_configures_and_reports_unchanged(
    master: MasterProcess, tmp_path: Path
) -> None:
    manifest = write(tmp_path, "app.yaml", APP.format(ns="cli-apply", replicas=2))
    assert ok(master, "apply", "-f", manifest).splitlines() == [
        "namespace/cli-apply created",
        "deployment.apps/web created",
        "service/web created",
    ]
    service = json.loads(ok(master, "get", "svc", "web", "-n", "cli-apply", "-o", "json"))
    cluster_ip = service["spec"]["clusterIP"]
    node_port = service["spec"]["ports"][0]["nodePort"]

    second = ok(master, "apply", "-f", manifest).splitlines()
    assert [line.split()[0] for line in second] == [
        "namespace/cli-apply",
        "deployment.apps/web",
        "service/web",
    ]
    assert all(line.split()[1] in ("unchanged", "configured") for line in second)
    assert ok(master, "apply", "-f", manifest).splitlines() == [
        "namespace/cli-apply unchanged",
        "deployment.apps/web unchanged",
        "service/web unchanged",
    ]

    scaled = write(tmp_path, "scaled.yaml", APP.format(ns="cli-apply", replicas=3))
    assert "deployment.apps/web configured" in ok(master, "apply", "-f", scaled).splitlines()
    deploy = json.loads(ok(master, "get", "deploy/web", "-n", "cli-apply", "-o", "json"))
    assert deploy["spec"]["replicas"] == 3
    # YAML numbers in resource maps were sent as quantity strings.
    resources = deploy["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"limits": {"cpu": "1"}, "requests": {"cpu": "0.5", "memory": "64Mi"}}
    # The server kept the allocated clusterIP and nodePort the manifest leaves out.
    service = json.loads(ok(master, "get", "svc", "web", "-n", "cli-apply", "-o", "json"))
    assert service["spec"]["clusterIP"] == cluster_ip
    assert service["spec"]["ports"][0]["nodePort"] == node_port


def test_apply_directory_and_stdin(master: MasterProcess, tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "b.yml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: second, namespace: cli-dir}\n"
        "spec: {containers: [{name: a, image: busybox}]}\n"
    )
    (folder / "a.json").write_text(
        json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cli-dir"}})
    )
    (folder / "notes.txt").write_text("not a manifest")
    assert ok(master, "apply", "-f", str(folder)).splitlines() == [
        "namespace/cli-dir created",
        "pod/second created",
    ]
    piped = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: piped}\n"
        "spec: {containers: [{name: a, image: busybox}]}\n"
    )
    assert ok(master, "apply", "-n", "cli-dir", "-f", "-", stdin=piped) == "pod/piped created\n"
    assert ok(master, "get", "pods", "-n", "cli-dir", "-o", "name").splitlines() == [
        "pod/piped",
        "pod/second",
    ]


def test_unknown_field_names_the_path_and_applies_nothing(
    master: MasterProcess, tmp_path: Path
) -> None:
    manifest = write(
        tmp_path,
        "deploy.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: typo-first}\n"
        "spec: {containers: [{name: a, image: busybox}]}\n"
        "---\n"
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: typo}\n"
        "spec:\n  template:\n    spec:\n      contaners: []\n",
    )
    result = kubeling(master, "apply", "-f", manifest)
    assert result.returncode != 0
    assert result.stderr.strip() == (
        f"error: {manifest}: document 2 (Deployment typo): "
        'unknown field "spec.template.spec.contaners"'
    )
    assert result.stdout == ""
    missing = kubeling(master, "get", "pod", "typo-first")
    assert missing.returncode == 1


def test_non_string_label_values_are_rejected(master: MasterProcess, tmp_path: Path) -> None:
    manifest = write(
        tmp_path,
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: lbl, labels: {version: 1}}\n"
        "spec: {containers: [{name: a, image: busybox}]}\n",
    )
    result = kubeling(master, "apply", "-f", manifest)
    assert result.returncode == 1
    assert "metadata.labels[version]: expected a string" in result.stderr
    assert kubeling(master, "get", "pod", "lbl").returncode == 1


def test_wrong_api_version_and_unknown_kind(master: MasterProcess, tmp_path: Path) -> None:
    manifest = write(tmp_path, "x.yaml", "apiVersion: v1\nkind: Deployment\nmetadata: {name: x}\n")
    result = kubeling(master, "apply", "-f", manifest)
    assert result.returncode == 1
    assert 'apiVersion "v1" is wrong for kind Deployment: use "apps/v1"' in result.stderr
    manifest = write(tmp_path, "y.yaml", "apiVersion: v1\nkind: Gadget\nmetadata: {name: y}\n")
    result = kubeling(master, "apply", "-f", manifest)
    assert 'no matches for kind "Gadget" in version "v1"' in result.stderr


def test_invalid_manifest_reports_field_paths(master: MasterProcess, tmp_path: Path) -> None:
    manifest = write(
        tmp_path,
        "invalid.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: broken}\n"
        "spec:\n  replicas: -1\n  selector: {matchLabels: {app: x}}\n"
        "  template:\n    metadata: {labels: {app: x}}\n"
        "    spec: {containers: [{name: a, image: busybox}]}\n",
    )
    result = kubeling(master, "apply", "-f", manifest)
    assert result.returncode == 1
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith(
        f'Error from server (Invalid): error when applying "{manifest}": '
        'Deployment "broken" is invalid: '
    )
    assert "spec.replicas: " in line
    assert kubeling(master, "get", "deploy", "broken").returncode == 1


# ---------------------------------------------------------------------------- get


def test_get_tables(master: MasterProcess, tmp_path: Path) -> None:
    ok(master, "apply", "-f", write(tmp_path, "app.yaml", APP.format(ns="cli-get", replicas=2)))

    rows = table(ok(master, "get", "deploy", "-n", "cli-get"))
    assert rows[0] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert rows[1][:4] == ["web", "0/2", "0", "0"]

    rows = table(ok(master, "get", "services", "-n", "cli-get", "-o", "wide"))
    assert rows[0] == ["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE", "SELECTOR"]
    name, kind, ip, ports, _, selector = rows[1]
    assert (name, kind, selector) == ("web", "NodePort", "app=web")
    assert ip.startswith("10.") and ports.startswith("80:") and ports.endswith("/TCP")

    rows = table(ok(master, "get", "svc", "-A"))
    assert rows[0][:2] == ["NAMESPACE", "NAME"]
    assert ["cli-get", "web"] in [row[:2] for row in rows]

    rows = table(ok(master, "get", "ns"))
    assert rows[0] == ["NAME", "STATUS", "AGE"]
    assert ["cli-get", "Active"] in [row[:2] for row in rows]

    # Several kinds at once, and kind/name syntax.
    output = ok(master, "get", "deploy,svc", "-n", "cli-get")
    assert "UP-TO-DATE" in output and "CLUSTER-IP" in output
    assert table(ok(master, "get", "service/web", "-n", "cli-get"))[1][0] == "web"


def test_get_json_yaml_and_name(master: MasterProcess, tmp_path: Path) -> None:
    ok(master, "apply", "-f", write(tmp_path, "app.yaml", APP.format(ns="cli-out", replicas=2)))

    deploy = json.loads(ok(master, "get", "deployment", "web", "-n", "cli-out", "-o", "json"))
    assert deploy["apiVersion"] == "apps/v1" and deploy["kind"] == "Deployment"
    assert deploy["metadata"]["name"] == "web" and deploy["metadata"]["uid"]
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.25"

    listed = yaml.safe_load(ok(master, "get", "deploy", "-n", "cli-out", "-o", "yaml"))
    assert listed["apiVersion"] == "v1" and listed["kind"] == "List"
    assert [item["metadata"]["name"] for item in listed["items"]] == ["web"]

    several = json.loads(ok(master, "get", "deploy/web", "svc/web", "-n", "cli-out", "-o", "json"))
    assert several["kind"] == "List"
    assert [item["kind"] for item in several["items"]] == ["Deployment", "Service"]

    names = ok(master, "get", "deploy,svc", "-n", "cli-out", "-o", "name").splitlines()
    assert names == ["deployment.apps/web", "service/web"]

    # `get -o yaml` output applies back unchanged.
    exported = ok(master, "get", "svc", "web", "-n", "cli-out", "-o", "yaml")
    first = ok(master, "apply", "-f", "-", stdin=exported)
    assert first in ("service/web unchanged\n", "service/web configured\n")
    assert ok(master, "apply", "-f", "-", stdin=exported) == "service/web unchanged\n"


async def test_get_with_selectors(master: MasterProcess, api: Client) -> None:
    await api.namespaces.create(core_pb2.Namespace(metadata={"name": "cli-sel"}))
    for name, labels in (("a1", {"app": "a", "tier": "fe"}), ("a2", {"app": "a"}), ("b1", {})):
        await api.pods.create(make_pod(name, "cli-sel", labels))

    def names(*args: str) -> list[str]:
        return ok(master, "get", "pods", "-n", "cli-sel", "-o", "name", *args).splitlines()

    assert await asyncio.to_thread(names, "-l", "app=a") == ["pod/a1", "pod/a2"]
    assert await asyncio.to_thread(names, "-l", "app=a,tier!=fe") == ["pod/a2"]
    assert await asyncio.to_thread(names, "-l", "!app") == ["pod/b1"]
    assert await asyncio.to_thread(names, "--field-selector", "metadata.name=b1") == ["pod/b1"]

    rows = table(await asyncio.to_thread(ok, master, "get", "po", "-n", "cli-sel", "-o", "wide"))
    assert rows[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert rows[1][:4] == ["a1", "0/1", "Pending", "0"]

    bad = await asyncio.to_thread(kubeling, master, "get", "pods", "-l", "app in (")
    assert bad.returncode == 1
    assert bad.stderr.startswith("Error from server (Invalid): label_selector: ")


def test_get_missing_fails(master: MasterProcess) -> None:
    result = kubeling(master, "get", "pods", "nope")
    assert result.returncode == 1
    assert result.stderr.strip() == 'Error from server (NotFound): pods "nope" not found'

    result = kubeling(master, "get", "widgets")
    assert result.returncode == 1
    assert result.stderr.strip() == 'error: the server doesn\'t have a resource type "widgets"'

    result = kubeling(master, "get", "pods", "-n", "cli-empty")
    assert result.returncode == 0
    assert result.stderr.strip() == "No resources found in cli-empty namespace."


async def test_get_watch_prints_changes_and_stops_on_interrupt(
    master: MasterProcess, api: Client
) -> None:
    await api.namespaces.create(core_pb2.Namespace(metadata={"name": "cli-watch"}))
    proc = await asyncio.create_subprocess_exec(
        str(KUBELING),
        *("--server", master.address, "get", "pods", "-n", "cli-watch", "-w"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        await asyncio.sleep(1.5)  # let it list (nothing) and start watching
        await api.pods.create(make_pod("watched", "cli-watch", {}))
        header = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        row = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert header.split()[:3] == ["NAME", "READY", "STATUS"]
        assert row.split()[:3] == ["watched", "0/1", "Pending"]
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 20)
    stderr = (await proc.stderr.read()).decode()
    assert code == 0, stderr
    assert "Traceback" not in stderr


# ----------------------------------------------------------------------- describe


async def test_describe_shows_details_and_events(master: MasterProcess, api: Client) -> None:
    await api.namespaces.create(core_pb2.Namespace(metadata={"name": "cli-desc"}))
    pod = make_pod("described", "cli-desc", {"app": "d"})
    pod.spec.containers[0].resources.requests["cpu"] = "250m"
    await api.pods.create(pod)
    for name, reason, message, target in (
        ("e1", "Scheduled", "Successfully assigned cli-desc/described", "described"),
        ("e2", "BackOff", "Back-off restarting failed container", "described"),
        ("e3", "Unrelated", "about another pod", "other"),
    ):
        event = core_pb2.Event()
        event.metadata.name = name
        event.metadata.namespace = "cli-desc"
        event.involved_object.kind = "Pod"
        event.involved_object.name = target
        event.involved_object.namespace = "cli-desc"
        event.reason = reason
        event.message = message
        event.type = "Warning" if reason == "BackOff" else "Normal"
        event.source.component = "kubelet"
        event.last_timestamp.GetCurrentTime()
        event.count = 1
        await api.events.create(event)

    output = await asyncio.to_thread(ok, master, "describe", "pod", "described", "-n", "cli-desc")
    lines = output.splitlines()
    assert lines[0].split() == ["Name:", "described"]
    assert ["Namespace:", "cli-desc"] in [line.split() for line in lines]
    assert any(line.split() == ["Labels:", "app=d"] for line in lines)
    assert any(line.split() == ["Status:", "Pending"] for line in lines)
    assert any(line.split() == ["Image:", "busybox:1.36"] for line in lines)
    assert any(line.split() == ["cpu:", "250m"] for line in lines)
    events_at = lines.index("Events:")
    events = table("\n".join(lines[events_at + 1 :]))
    assert events[0] == ["Type", "Reason", "Age", "From", "Message"]
    reasons = [row[1] for row in events[2:]]
    assert reasons == ["Scheduled", "BackOff"]
    assert "Unrelated" not in output

    missing = await asyncio.to_thread(kubeling, master, "describe", "pod", "ghost")
    assert missing.returncode == 1
    assert 'pods "ghost" not found' in missing.stderr


def test_describe_deployment_and_service(master: MasterProcess, tmp_path: Path) -> None:
    ok(master, "apply", "-f", write(tmp_path, "app.yaml", APP.format(ns="cli-dd", replicas=2)))
    output = ok(master, "describe", "deploy", "web", "-n", "cli-dd")
    assert "Replicas:" in output and "2 desired" in output
    assert "Events:" in output.splitlines()[-1]
    output = ok(master, "describe", "svc/web", "-n", "cli-dd")
    assert any(line.split()[:2] == ["Type:", "NodePort"] for line in output.splitlines())


# ------------------------------------------------------------------------- delete


async def test_delete(master: MasterProcess, api: Client, tmp_path: Path) -> None:
    await api.namespaces.create(core_pb2.Namespace(metadata={"name": "cli-del"}))
    for name in ("d1", "d2", "d3"):
        await api.pods.create(make_pod(name, "cli-del", {"group": "x" if name != "d1" else "y"}))

    out = await asyncio.to_thread(ok, master, "delete", "pod", "d1", "-n", "cli-del")
    assert out == 'pod "d1" deleted\n'
    out = await asyncio.to_thread(
        ok, master, "delete", "pods", "-l", "group=x", "-n", "cli-del", "--grace-period", "0"
    )
    assert out.splitlines() == ['pod "d2" deleted', 'pod "d3" deleted']

    missing = await asyncio.to_thread(kubeling, master, "delete", "pod", "d1", "-n", "cli-del")
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'Error from server (NotFound): pods "d1" not found'
    ignored = await asyncio.to_thread(
        kubeling, master, "delete", "pod", "d1", "-n", "cli-del", "--ignore-not-found"
    )
    assert ignored.returncode == 0

    manifest = write(tmp_path, "app.yaml", APP.format(ns="cli-delf", replicas=1))
    await asyncio.to_thread(ok, master, "apply", "-f", manifest)
    out = await asyncio.to_thread(ok, master, "delete", "-f", manifest, "--cascade", "orphan")
    assert out.splitlines() == [
        'deployment.apps "web" deleted',
        'service "web" deleted',
        'namespace "cli-delf" deleted',
    ]


# ------------------------------------------------------------------ server address


def test_server_from_config_file_and_environment(master: MasterProcess) -> None:
    home = Path(os.environ["HOME"])  # a temporary HOME, set by conftest
    config = home / ".kubeling" / "config"

    unreachable = kubeling(None, "get", "ns")
    assert unreachable.returncode == 1
    assert "cannot reach the kubeling server at localhost:6443" in unreachable.stderr

    config.parent.mkdir()
    config.write_text(f"server: {master.address}\n")
    assert "default" in ok(None, "get", "ns")

    # The environment beats the config file, and --server beats both.
    dead = "127.0.0.1:1"
    result = kubeling(None, "get", "ns", env={"KUBELING_SERVER": dead})
    assert result.returncode == 1 and f"server at {dead}" in result.stderr
    result = kubeling(master, "get", "ns", env={"KUBELING_SERVER": dead})
    assert result.returncode == 0
    config.write_text(f"server: {dead}\n")
    assert kubeling(None, "get", "ns", env={"KUBELING_SERVER": master.address}).returncode == 0


def test_usage_errors_have_no_traceback(master: MasterProcess) -> None:
    for args in (("get",), ("delete", "pods"), ("apply",), ("apply", "-f", "/no/such/file")):
        result = kubeling(master, *args)
        assert result.returncode != 0, args
        assert result.stderr.strip(), args


def test_wall_time_is_reasonable(master: MasterProcess) -> None:
    # The CLI starts and answers quickly: imports must stay light.
    started = time.monotonic()
    ok(master, "get", "ns", "-o", "name")
    assert time.monotonic() - started < 10


async def test_reapplying_a_scheduled_pod_keeps_its_node(
    master: MasterProcess, api: Client, tmp_path: Path
) -> None:
    manifest = write(
        tmp_path,
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bound}\n"
        "spec: {containers: [{name: a, image: busybox}]}\n",
    )
    assert await asyncio.to_thread(ok, master, "apply", "-f", manifest) == "pod/bound created\n"
    pod = await api.pods.get("bound", "default")
    pod.spec.node_name = "node-a"  # what the scheduler does
    await api.pods.update(pod)
    assert await asyncio.to_thread(ok, master, "apply", "-f", manifest) == "pod/bound unchanged\n"
    assert (await api.pods.get("bound", "default")).spec.node_name == "node-a"
