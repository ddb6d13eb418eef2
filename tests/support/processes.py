"""Start and stop real kubeling processes for tests and benchmarks.

Each process is stopped by its own PID (TERM, then KILL), never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubeling.client.config import read_config
from kubeling.common import pki
from kubeling.common.tls import channel_credentials


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(
    address: str,
    timeout: float = 20.0,
    process: subprocess.Popen[bytes] | None = None,
    config: Path | None = None,
) -> None:
    """Until `address` answers health SERVING; over TLS with the credentials of the
    client config `config` (a master's admin.conf, which it writes as it starts)."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before serving")
        if _serving(address, config):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{address} did not start serving within {timeout}s")
        time.sleep(0.05)


def _serving(address: str, config: Path | None) -> bool:
    if config is None:
        channel = grpc.insecure_channel(address)
    elif not config.exists():
        return False
    else:
        credentials = read_config(config).credentials
        assert credentials is not None, f"{config} holds no credentials"
        channel = grpc.secure_channel(address, channel_credentials(credentials))
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def stop_process(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Stop `process` by its PID: TERM, then KILL if it has not exited in `grace` s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


class MasterProcess:
    """A real `kubeling-master` on loopback with its own data directory, plaintext
    (--insecure) so that tests reach it without credentials; with `tls`, as users
    run it: mutual TLS and a join port on loopback (`admin_conf`, `pin`).

    `address`: where it listens instead (such as `unix:/path/master.sock`)."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *extra: str,
        address: str | None = None,
        tls: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.address = address or f"127.0.0.1:{self.port}"
        self.tls = tls
        self.join_port = free_port() if tls else 0
        self.join_address = f"127.0.0.1:{self.join_port}" if tls else ""
        self.extra = list(extra)
        self.log_path = data_dir / "master.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def admin_conf(self) -> Path:
        return self.data_dir / "admin.conf"

    @property
    def pin(self) -> str:
        """The CA's --discovery-token-ca-cert-hash."""
        return pki.ca_pin((self.data_dir / "pki" / "ca.crt").read_bytes())

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "kubeling.master.main",
            "--listen", self.address,
            "--data-dir", str(self.data_dir),
            *(["--join-listen", self.join_address] if self.tls else ["--insecure"]),
            # Tests may run several masters: no fixed metrics port unless asked.
            *([] if "--metrics-bind-address" in self.extra
              else ["--metrics-bind-address", "127.0.0.1:0"]),
            *self.extra,
        ]  # fmt: skip

    def start(self) -> MasterProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        wait_serving(
            self.address,
            timeout=60 if self.tls else 20,
            process=self.process,
            config=self.admin_conf if self.tls else None,
        )
        return self

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""


@contextlib.contextmanager
def running_master(
    data_dir: Path, *extra: str, address: str | None = None, tls: bool = False
) -> Iterator[MasterProcess]:
    """A MasterProcess (arguments as there), started, and stopped on the way out."""
    proc = MasterProcess(data_dir, None, *extra, address=address, tls=tls)
    try:
        yield proc.start()
    finally:
        proc.stop()
