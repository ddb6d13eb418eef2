"""`kubeling-kubelet` joins a real `kubeling-master` with TLS as users run it: the
token in a file, the CA pin on the command line. It registers, keeps its
certificate (0600) in --cert-dir and restarts from it without the token; with a
wrong pin it exits before sending the token. No secret shows in `ps` or a log.
Everything on loopback; the runtime is the fake CRI server on a unix socket."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubeling.client import Client
from kubeling.common import pki
from kubeling.cri.fake import FakeCRIServer, FakeRuntime
from tests.support.processes import MasterProcess, running_master, stop_process
from tests.support.waiting import eventually_passes

KUBELING = Path(sys.executable).parent / "kubeling"


@pytest.fixture
def master(tmp_path: Path) -> Iterator[MasterProcess]:
    with running_master(tmp_path / "master", "--controllers=", tls=True) as proc:
        yield proc


@pytest.fixture
async def cri() -> AsyncIterator[str]:
    sock_dir = Path(tempfile.mkdtemp(prefix="knj-", dir="/tmp"))
    endpoint = f"unix://{sock_dir}/cri.sock"
    server = FakeCRIServer(FakeRuntime(), endpoint)
    await server.start()
    try:
        yield endpoint
    finally:
        await server.stop(0)
        shutil.rmtree(sock_dir, ignore_errors=True)


def _create_token(master: MasterProcess) -> str:
    done = subprocess.run(
        [str(KUBELING), "--config", str(master.admin_conf), "token", "create", "--ttl", "10m"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split()[-1]


def _kubelet(
    master: MasterProcess, endpoint: str, tmp_path: Path, pin: str, *extra: str
) -> subprocess.Popen[bytes]:
    with (tmp_path / "kubelet.log").open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable, "-m", "kubeling.kubelet.main",
                "--master", master.address, "--node-name", "joiner",
                "--discovery-token-ca-cert-hash", pin,
                "--join-address", f"127.0.0.1:{master.join_port}",
                "--cert-dir", str(tmp_path / "kubelet-pki"),
                "--node-ip", "127.0.0.1", "--runtime-endpoint", endpoint,
                "--listen", "127.0.0.1:0", "--healthz-bind-address", "127.0.0.1:0",
                "--pod-log-dir", str(tmp_path / "pods"), *extra,
            ],
            stdout=out, stderr=subprocess.STDOUT,
            env={
                **{k: v for k, v in os.environ.items() if k != "KUBELING_TOKEN"},
                "PYTHONUNBUFFERED": "1",
            },
        )  # fmt: skip


async def test_a_kubelet_process_joins_keeps_its_certificate_and_hides_the_token(
    master: MasterProcess, cri: str, tmp_path: Path
) -> None:
    token = await asyncio.to_thread(_create_token, master)
    secret = token.split(".")[1]
    token_file = tmp_path / "join-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    log = tmp_path / "kubelet.log"

    async def describe() -> str:
        return log.read_text(errors="replace")[-3000:] + master.log()[-2000:]

    process = _kubelet(master, cri, tmp_path, master.pin, "--token-file", str(token_file))
    try:
        async with Client.from_config(master.admin_conf, timeout=10) as admin:
            await eventually_passes(lambda: admin.nodes.get("joiner"), 60, describe=describe)
            proc_file = Path(f"/proc/{process.pid}/cmdline")
            cmdline = (await asyncio.to_thread(proc_file.read_bytes)).decode()
            assert "--token-file" in cmdline and secret not in cmdline
        cert_dir = tmp_path / "kubelet-pki"
        for name in ("ca.crt", "kubelet.crt", "kubelet.key"):
            assert stat.S_IMODE(os.stat(cert_dir / name).st_mode) == 0o600, name
        info = pki.cert_info((cert_dir / "kubelet.crt").read_bytes())
        assert (info.common_name, info.organizations) == ("system:node:joiner", ("system:nodes",))
    finally:
        await asyncio.to_thread(stop_process, process)
    # Restarted without any token: the stored certificate is enough (it registers
    # again and renews its Lease with it).
    stopped = time.time()
    restarted = _kubelet(master, cri, tmp_path, "")
    try:
        async with Client.from_config(master.admin_conf, timeout=10) as admin:

            async def renewed_after_restart() -> bool:
                assert restarted.poll() is None, await describe()
                lease = await admin.leases.get("joiner", "kube-node-lease")
                return bool(lease.spec.renew_time.ToMicroseconds() / 1e6 > stopped)

            await eventually_passes(renewed_after_restart, 60, describe=describe)
    finally:
        await asyncio.to_thread(stop_process, restarted)
    assert secret not in log.read_text(errors="replace")
    assert secret not in master.log()


async def test_a_wrong_pin_makes_the_kubelet_exit_before_sending_the_token(
    master: MasterProcess, cri: str, tmp_path: Path
) -> None:
    token = await asyncio.to_thread(_create_token, master)
    token_file = tmp_path / "join-token"
    token_file.write_text(token + "\n")
    stranger = pki.ca_pin(pki.make_ca("stranger").cert_pem)
    process = _kubelet(master, cri, tmp_path, stranger, "--token-file", str(token_file))
    try:
        code = await asyncio.to_thread(process.wait, 60)
    finally:
        await asyncio.to_thread(stop_process, process)
    text = (tmp_path / "kubelet.log").read_text(errors="replace")
    assert code != 0, text
    assert f"does not match --discovery-token-ca-cert-hash {stranger}" in text
    assert "refusing to send the token" in text
    assert "joined" not in master.log()
    assert not (tmp_path / "kubelet-pki").exists()
