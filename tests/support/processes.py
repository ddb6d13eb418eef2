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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_serving(
    address: str, timeout: float = 20.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"process exited with {process.returncode} before serving")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} did not start serving within {timeout}s")
            time.sleep(0.05)


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
    (--insecure) so that tests reach it without credentials.

    `address`: where it listens instead (such as `unix:/path/master.sock`)."""

    def __init__(
        self, data_dir: Path, port: int | None = None, *extra: str, address: str | None = None
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.address = address or f"127.0.0.1:{self.port}"
        self.extra = list(extra)
        self.log_path = data_dir / "master.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> MasterProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "kubeling.master.main",
                "--listen", self.address,
                "--data-dir", str(self.data_dir),
                "--insecure",
                # Tests may run several masters: no fixed metrics port unless asked.
                *([] if "--metrics-bind-address" in self.extra
                  else ["--metrics-bind-address", "127.0.0.1:0"]),
                *self.extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        log.close()
        wait_serving(self.address, process=self.process)
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
    data_dir: Path, *extra: str, address: str | None = None
) -> Iterator[MasterProcess]:
    """A MasterProcess (arguments as there), started, and stopped on the way out."""
    proc = MasterProcess(data_dir, None, *extra, address=address)
    try:
        yield proc.start()
    finally:
        proc.stop()
