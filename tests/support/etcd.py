"""Real etcd members for tests and benchmarks (Debian's etcd-server, /usr/bin/etcd).

`EtcdCluster(tmp, members=3)` starts that many members on loopback ports, each with
its own data directory, as one cluster; `.endpoints` is the client list
("127.0.0.1:P1,127.0.0.1:P2,..."). With `tls=EtcdTlsFiles(...)` every member serves
clients and peers over mutual TLS. Members are stopped by their own PIDs; `stop(i)`
/ `start(i)` / `kill(i)` one member to test losing it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import free_port, stop_process

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def etcd_available() -> bool:
    return Path(ETCD).exists()


def require_etcd() -> None:
    """Skip (or fail, under KUBELING_REQUIRE_REAL=1) when etcd is not installed."""
    if etcd_available():
        return
    message = "etcd is not installed (apt-get install etcd-server)"
    if os.environ.get("KUBELING_REQUIRE_REAL") == "1":
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class EtcdTlsFiles:
    """Per-member certificate files; `{name}` in a path is replaced by the member name."""

    ca: Path
    server_cert: str
    server_key: str
    peer_cert: str
    peer_key: str

    @classmethod
    def issued_in(cls, certs: Path, first: str = "etcd0") -> EtcdTlsFiles:
        """The files `kubeling-master etcd-certs --out CERTS/NAME` made for each
        member (every member's ca.crt is the same etcd CA)."""
        return cls(
            ca=certs / first / "ca.crt",
            server_cert=f"{certs}/{{name}}/server.crt",
            server_key=f"{certs}/{{name}}/server.key",
            peer_cert=f"{certs}/{{name}}/peer.crt",
            peer_key=f"{certs}/{{name}}/peer.key",
        )

    def member(self, name: str) -> tuple[Path, Path, Path, Path]:
        return (
            Path(self.server_cert.format(name=name)),
            Path(self.server_key.format(name=name)),
            Path(self.peer_cert.format(name=name)),
            Path(self.peer_key.format(name=name)),
        )


@dataclass
class _Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None


class EtcdCluster:
    def __init__(
        self,
        workdir: Path,
        members: int = 1,
        tls: EtcdTlsFiles | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.workdir = workdir
        self.tls = tls
        self.host = host
        self.scheme = "https" if tls is not None else "http"
        self.members = [
            _Member(f"etcd{i}", free_port(), free_port(), workdir / f"etcd{i}")
            for i in range(members)
        ]

    @property
    def endpoints(self) -> str:
        return ",".join(f"{self.host}:{m.client_port}" for m in self.members)

    def endpoint(self, index: int) -> str:
        return f"{self.host}:{self.members[index].client_port}"

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}={self.scheme}://{self.host}:{m.peer_port}" for m in self.members)

    def _command(self, member: _Member) -> list[str]:
        client = f"{self.scheme}://{self.host}:{member.client_port}"
        peer = f"{self.scheme}://{self.host}:{member.peer_port}"
        command = [
            ETCD,
            "--name",
            member.name,
            "--data-dir",
            str(member.data_dir),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            self._initial_cluster(),
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            f"kubeling-test-{id(self)}",
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--log-level",
            "warn",
            "--logger",
            "zap",
        ]
        if self.tls is not None:
            cert, key, peer_cert, peer_key = self.tls.member(member.name)
            command += [
                "--client-cert-auth",
                "--trusted-ca-file",
                str(self.tls.ca),
                "--cert-file",
                str(cert),
                "--key-file",
                str(key),
                "--peer-client-cert-auth",
                "--peer-trusted-ca-file",
                str(self.tls.ca),
                "--peer-cert-file",
                str(peer_cert),
                "--peer-key-file",
                str(peer_key),
            ]
        return command

    def start(self, index: int | None = None) -> None:
        """Start every member (or one), then wait until the cluster answers."""
        for i, member in enumerate(self.members):
            if index is not None and i != index:
                continue
            if member.process is not None and member.process.poll() is None:
                continue
            log = open(self.workdir / f"{member.name}.log", "ab")  # noqa: SIM115
            member.process = subprocess.Popen(
                self._command(member), stdout=log, stderr=subprocess.STDOUT
            )
            log.close()
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every running member answers /health over its client port."""
        deadline = time.monotonic() + timeout
        for member in self.members:
            if member.process is None:
                continue
            while not self._healthy(member):
                if member.process.poll() is not None:
                    raise RuntimeError(f"{member.name} exited: {self.log_tail(member.name)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{member.name} not healthy: {self.log_tail(member.name)}")
                time.sleep(0.1)

    def _healthy(self, member: _Member) -> bool:
        import socket

        # A TCP accept is enough to know the member listens; the store's own client
        # retries until the cluster has a leader.
        with (
            contextlib.suppress(OSError),
            socket.create_connection((self.host, member.client_port), timeout=0.5),
        ):
            return True
        return False

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, index: int) -> None:
        member = self.members[index]
        if member.process is not None:
            stop_process(member.process)
            member.process = None

    def kill(self, index: int) -> None:
        member = self.members[index]
        if member.process is not None and member.process.poll() is None:
            member.process.kill()
            member.process.wait(timeout=30)
        member.process = None

    def close(self) -> None:
        for i in range(len(self.members)):
            self.stop(i)


@contextlib.contextmanager
def running_etcd(
    workdir: Path, members: int = 1, tls: EtcdTlsFiles | None = None
) -> Iterator[EtcdCluster]:
    require_etcd()
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = EtcdCluster(workdir, members, tls)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
