"""The README's grpcurl calls, verbatim, with the real grpcurl binary, against a
master serving mutual TLS: the README's `PKI`/`TLS` lines are read from the README
and used as written (with this master's data directory and address)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.processes import free_port, stop_process

README = Path(__file__).resolve().parents[2] / "README.md"
KUBELING = Path(sys.executable).parent / "kubeling"


@dataclass
class TlsMaster:
    address: str
    data_dir: Path
    log: Path

    @property
    def pki(self) -> Path:
        return self.data_dir / "pki"


def wait_tls_serving(master: TlsMaster, process: subprocess.Popen[bytes]) -> None:
    import time

    deadline = time.monotonic() + 30
    admin = master.pki / "admin.key"
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"master exited: {master.log.read_text(errors='replace')}")
        if admin.exists():
            creds = grpc.ssl_channel_credentials(
                (master.pki / "ca.crt").read_bytes(),
                admin.read_bytes(),
                (master.pki / "admin.crt").read_bytes(),
            )
            with grpc.secure_channel(master.address, creds) as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1.0
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no TLS master at {master.address}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsMaster]:
    """A real master with TLS on (the default), no controllers."""
    base = tmp_path_factory.mktemp("tlsmaster")
    tls = TlsMaster(f"127.0.0.1:{free_port()}", base, base / "master.log")
    with tls.log.open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "kubeling.master.main",
                "--listen", tls.address,
                "--join-listen", f"127.0.0.1:{free_port()}",
                "--data-dir", str(base),
                "--controllers=",
                "--metrics-bind-address", "127.0.0.1:0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_tls_serving(tls, process)
        yield tls
    finally:
        stop_process(process)


def readme_tls_args(master: TlsMaster) -> list[str]:
    """The README's `TLS="..."` line, with $PKI as this master's pki folder."""
    lines = README.read_text().splitlines()
    (tls,) = [line for line in lines if line.startswith('TLS="')]
    value = tls.removeprefix('TLS="').removesuffix('"')
    return shlex.split(value.replace("$PKI", str(master.pki)))


def readme_calls() -> list[str]:
    """The grpcurl lines of the README's gRPC API section, but the endless Watch."""
    section = README.read_text().split("### gRPC API", 1)[1].split("\n### ", 1)[0]
    calls = [line for line in section.splitlines() if line.startswith("grpcurl $TLS ")]
    return [line for line in calls if not line.endswith("/Watch")]


def run_readme_line(
    bin_path: Path, master: TlsMaster, line: str
) -> subprocess.CompletedProcess[str]:
    argv = []
    for word in shlex.split(line):
        if word == "$TLS":
            argv += readme_tls_args(master)
        else:
            argv.append(word.replace("localhost:6443", master.address))
    argv[0] = str(bin_path / "grpcurl")
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def grpcurl(
    bin_path: Path, master: TlsMaster, *args: str, data: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [str(bin_path / "grpcurl"), *readme_tls_args(master)]
    if data is not None:
        cmd += ["-d", data]
    cmd += [master.address, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def test_readme_examples_work_verbatim(master: TlsMaster, bin_path: Path) -> None:
    calls = readme_calls()
    methods = [line.split()[-1] for line in calls]
    assert methods == [
        "list", "kubeling.v1.Pods/Create", "kubeling.v1.Pods/Get", "kubeling.v1.Pods/List",
        "kubeling.v1.Pods/Delete", "grpc.health.v1.Health/Check", "kubeling.v1.Pods/List",
    ]  # fmt: skip
    listed, created, got, listing, deleted, health, selected = (
        run_readme_line(bin_path, master, line) for line in calls
    )
    for result in (listed, created, got, listing, deleted, health, selected):
        assert result.returncode == 0, result.stderr
    assert {
        "kubeling.v1.Pods", "kubeling.v1.Nodes", "kubeling.v1.Services",
        "kubeling.v1.Namespaces", "kubeling.v1.EndpointSlices", "kubeling.v1.ReplicaSets",
        "kubeling.v1.Deployments", "kubeling.v1.DaemonSets", "kubeling.v1.Leases",
        "kubeling.v1.Events", "kubeling.v1.Tokens", "kubeling.v1.Certificates",
        "grpc.health.v1.Health",
    } <= set(listed.stdout.split())  # fmt: skip
    assert json.loads(created.stdout)["metadata"]["name"] == "web"
    assert json.loads(got.stdout)["spec"]["containers"][0]["image"] == "busybox"
    assert [p["metadata"]["name"] for p in json.loads(listing.stdout)["items"]] == ["web"]
    assert json.loads(health.stdout)["status"] == "SERVING"
    assert json.loads(selected.stdout).get("items", []) == []  # deleted, and on no node

    gone = run_readme_line(bin_path, master, calls[2])
    assert gone.returncode != 0 and "NotFound" in gone.stderr + gone.stdout


def test_without_a_client_certificate_nothing_is_served(master: TlsMaster, bin_path: Path) -> None:
    grpcurl_bin = str(bin_path / "grpcurl")
    plain = subprocess.run(
        [grpcurl_bin, "-plaintext", master.address, "list"], capture_output=True, text=True
    )
    assert plain.returncode != 0
    ca_only = subprocess.run(
        [grpcurl_bin, "-cacert", str(master.pki / "ca.crt"), master.address, "list"],
        capture_output=True,
        text=True,
    )
    assert ca_only.returncode != 0
    assert "kubeling.v1.Pods" not in plain.stdout + ca_only.stdout


def test_a_user_from_kubeling_user_add_works_with_grpcurl_and_its_role(
    master: TlsMaster, bin_path: Path, tmp_path: Path
) -> None:
    added = subprocess.run(
        [
            str(KUBELING), "--config", str(master.data_dir / "admin.conf"),
            "user", "add", "alice", "--role", "view", "-o", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    # The grpcurl command it prints, run as printed.
    (printed,) = [line for line in added.stdout.splitlines() if line.strip().startswith("grpcurl ")]
    argv = shlex.split(printed)
    argv[0] = str(bin_path / "grpcurl")
    listed = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert "kubeling.v1.Pods" in listed.stdout

    tls = ["-cacert", str(tmp_path / "ca.crt"), "-cert", str(tmp_path / "alice.crt"),
           "-key", str(tmp_path / "alice.key")]  # fmt: skip
    grpcurl_bin = str(bin_path / "grpcurl")
    read = subprocess.run(
        [grpcurl_bin, *tls, "-d", '{"namespace":"default"}', master.address,
         "kubeling.v1.Pods/List"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert read.returncode == 0, read.stderr
    pod = (
        '{"pod":{"metadata":{"name":"x","namespace":"default"},'
        '"spec":{"containers":[{"name":"x","image":"busybox"}]}}}'
    )
    write = subprocess.run(
        [grpcurl_bin, *tls, "-d", pod, master.address, "kubeling.v1.Pods/Create"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert write.returncode != 0
    assert "PermissionDenied" in write.stderr and "alice" in write.stderr, write.stderr


def test_kubernetes_json_names_are_accepted(master: TlsMaster, bin_path: Path) -> None:
    svc = (
        '{"service":{"metadata":{"name":"np","namespace":"default"},"spec":{"type":"NodePort",'
        '"selector":{"app":"np"},"ports":[{"port":80,"targetPort":"http","nodePort":30080}],'
        '"sessionAffinity":"ClientIP"}}}'
    )
    out = grpcurl(bin_path, master, "kubeling.v1.Services/Create", data=svc)
    assert out.returncode == 0, out.stderr
    spec = json.loads(out.stdout)["spec"]
    assert spec["ports"][0]["node_port"] == 30080
    assert spec["ports"][0]["target_port"] == "http"
    assert spec["clusterIP"].startswith("10.")


def test_invalid_request_reports_the_field(master: TlsMaster, bin_path: Path) -> None:
    bad = '{"pod":{"metadata":{"name":"x","namespace":"default"},"spec":{"containers":[]}}}'
    out = grpcurl(bin_path, master, "kubeling.v1.Pods/Create", data=bad)
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
    master: TlsMaster, bin_path: Path, method: str, data: str
) -> None:
    out = grpcurl(bin_path, master, method, data=data)
    assert out.returncode != 0
    assert "Code: InvalidArgument" in out.stderr or "Code: NotFound" in out.stderr, out.stderr
