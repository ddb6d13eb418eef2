"""The README's grpcurl calls, verbatim, with the real grpcurl binary."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.processes import MasterProcess


def grpcurl(
    bin_path: Path, address: str, *args: str, data: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [str(bin_path / "grpcurl"), "-plaintext"]
    if data is not None:
        cmd += ["-d", data]
    cmd += [address, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def test_readme_examples_work_verbatim(master: MasterProcess, bin_path: Path) -> None:
    address = master.address
    listed = grpcurl(bin_path, address, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {
        "kubeling.v1.Pods", "kubeling.v1.Nodes", "kubeling.v1.Services",
        "kubeling.v1.Namespaces", "kubeling.v1.EndpointSlices", "kubeling.v1.ReplicaSets",
        "kubeling.v1.Deployments", "kubeling.v1.DaemonSets", "kubeling.v1.Leases",
        "kubeling.v1.Events", "grpc.health.v1.Health",
    } <= services  # fmt: skip

    pod = (
        '{"pod":{"metadata":{"name":"web","namespace":"default"},'
        '"spec":{"containers":[{"name":"web","image":"busybox"}]}}}'
    )
    created = grpcurl(bin_path, address, "kubeling.v1.Pods/Create", data=pod)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["metadata"]["name"] == "web"

    got = grpcurl(
        bin_path, address, "kubeling.v1.Pods/Get", data='{"namespace":"default","name":"web"}'
    )
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["spec"]["containers"][0]["image"] == "busybox"

    listing = grpcurl(bin_path, address, "kubeling.v1.Pods/List", data='{"namespace":"default"}')
    assert listing.returncode == 0, listing.stderr
    assert [p["metadata"]["name"] for p in json.loads(listing.stdout)["items"]] == ["web"]

    deleted = grpcurl(
        bin_path, address, "kubeling.v1.Pods/Delete", data='{"namespace":"default","name":"web"}'
    )
    assert deleted.returncode == 0, deleted.stderr
    gone = grpcurl(
        bin_path, address, "kubeling.v1.Pods/Get", data='{"namespace":"default","name":"web"}'
    )
    assert gone.returncode != 0 and "NotFound" in gone.stderr + gone.stdout

    health = grpcurl(bin_path, address, "grpc.health.v1.Health/Check")
    assert health.returncode == 0 and json.loads(health.stdout)["status"] == "SERVING"


def test_kubernetes_json_names_are_accepted(master: MasterProcess, bin_path: Path) -> None:
    svc = (
        '{"service":{"metadata":{"name":"np","namespace":"default"},"spec":{"type":"NodePort",'
        '"selector":{"app":"np"},"ports":[{"port":80,"targetPort":"http","nodePort":30080}],'
        '"sessionAffinity":"ClientIP"}}}'
    )
    out = grpcurl(bin_path, master.address, "kubeling.v1.Services/Create", data=svc)
    assert out.returncode == 0, out.stderr
    spec = json.loads(out.stdout)["spec"]
    assert spec["ports"][0]["node_port"] == 30080
    assert spec["ports"][0]["target_port"] == "http"
    assert spec["clusterIP"].startswith("10.")


def test_invalid_request_reports_the_field(master: MasterProcess, bin_path: Path) -> None:
    bad = '{"pod":{"metadata":{"name":"x","namespace":"default"},"spec":{"containers":[]}}}'
    out = grpcurl(bin_path, master.address, "kubeling.v1.Pods/Create", data=bad)
    assert out.returncode != 0
    assert "InvalidArgument" in out.stderr and "spec.containers" in out.stderr


@pytest.mark.parametrize(
    "method,data",
    [
        ("kubeling.v1.Pods/List", '{"namespace":"default","labelSelector":"a in ("}'),
        ("kubeling.v1.Pods/Watch", '{"namespace":"default","resourceVersion":"abc"}'),
        ("kubeling.v1.Pods/Get", '{"namespace":"default","name":""}'),
    ],
)
def test_bad_arguments_get_clear_errors(
    master: MasterProcess, bin_path: Path, method: str, data: str
) -> None:
    out = grpcurl(bin_path, master.address, method, data=data)
    assert out.returncode != 0
    assert "Code: InvalidArgument" in out.stderr or "Code: NotFound" in out.stderr, out.stderr
