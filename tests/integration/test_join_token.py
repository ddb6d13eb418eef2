"""A master started with --bootstrap-tokens registers only nodes that present a
valid token: made, listed and deleted with `kubeling token` over the master's unix
socket; expired, deleted and unknown tokens refused; the first start prints a join
command on a terminal only; a real kubelet joins with --token-file and no secret on
its command line or in any log."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kubeling.client import Client
from kubeling.common.token import TOKEN_RE, create_token_sync
from kubeling.cri.fake import FakeCRIServer, FakeRuntime
from kubeling.v1 import core_pb2
from tests.support.processes import MasterProcess, free_port, running_master, stop_process
from tests.support.waiting import eventually_passes

KUBELING = Path(sys.executable).parent / "kubeling"
SECRET = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")


@pytest.fixture(scope="module")
def guarded() -> Iterator[MasterProcess]:
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    base = Path(tempfile.mkdtemp(prefix="kljoin-", dir="/tmp"))
    try:
        address = f"unix:{base}/master.sock"
        with running_master(base, "--controllers=", "--bootstrap-tokens", address=address) as proc:
            yield proc
    finally:
        shutil.rmtree(base, ignore_errors=True)


def kubeling(master: MasterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(KUBELING), "--server", master.address, "token", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def create(master: MasterProcess, *args: str) -> str:
    result = kubeling(master, "create", *args)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert TOKEN_RE.match(token), token
    return token


def node(name: str) -> core_pb2.Node:
    obj = core_pb2.Node()
    obj.metadata.name = name
    return obj


async def refused(master: MasterProcess, token: str, name: str) -> str:
    async with Client(master.address, token=token) as api:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await api.nodes.create(node(name))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    return error.value.details() or ""


async def test_registering_a_node_needs_a_valid_token(guarded: MasterProcess) -> None:
    master = guarded
    assert "unknown" not in await refused(master, "", "anonymous")
    assert "--token-file" in await refused(master, "", "anonymous")
    assert "malformed" in await refused(master, "wrong.token", "guess")
    details = await refused(master, "zzzzzz.0123456789abcdef", "guess")
    assert "unknown bootstrap token zzzzzz" in details

    token = create(master, "--ttl", "1h", "--description", "worker one")
    async with Client(master.address, token=token) as worker:
        created = await worker.nodes.create(node("worker-1"))
        assert created.metadata.uid
        # The token rides on streams too, and guards joining only.
        events = worker.nodes.watch()
        first = await anext(aiter(events))
        assert first.object.metadata.name == "worker-1"
    async with Client(master.address) as anonymous:
        assert [n.metadata.name for n in (await anonymous.nodes.list()).items] == ["worker-1"]

    # Expired: a token whose ttl has passed by the time it is used (1 ms).
    short = create(master, "--ttl", "1ms")
    assert f"bootstrap token {short[:6]} expired at" in await refused(master, short, "late")

    # Deleted: refused as unknown from then on.
    result = kubeling(master, "delete", token[:6])
    assert result.returncode == 0, result.stderr
    assert "unknown bootstrap token" in await refused(master, token, "worker-2")

    # Nothing the master logged contains a secret.
    for made in (token, short):
        assert made.split(".")[1] not in master.log()


def test_token_create_list_and_delete(guarded: MasterProcess) -> None:
    master = guarded
    forever = create(master, "--ttl", "0", "--description", "for ever")
    daily = create(master, "--description", "default ttl")
    # What the lab uses, from synchronous code.
    lab = create_token_sync(master.address, 3600, "the lab")
    assert TOKEN_RE.match(lab)
    listing = kubeling(master, "list")
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    assert listing.stdout.splitlines()[0].split() == ["ID", "TTL", "EXPIRES", "DESCRIPTION"]
    assert "<forever>" in rows[forever[:6]] and "for ever" in rows[forever[:6]]
    assert re.search(r"\b2[34]h\b", rows[daily[:6]]), rows[daily[:6]]
    assert re.search(r"\b(59m|60m)\b", rows[lab[:6]]) and "the lab" in rows[lab[:6]]
    # The list never shows a secret.
    for token in (forever, daily, lab):
        assert token.split(".")[1] not in listing.stdout
    result = kubeling(master, "delete", forever, daily[:6])  # whole token or ID
    assert result.returncode == 0, result.stderr
    listing = kubeling(master, "list").stdout
    assert forever[:6] not in listing and daily[:6] not in listing
    missing = kubeling(master, "delete", "abcdef")
    assert missing.returncode == 1 and "abcdef not found" in missing.stderr
    bad = kubeling(master, "create", "--ttl", "soon")
    assert bad.returncode == 1 and "--ttl" in bad.stderr
    # The tokens file keeps hashes only, mode 0600.
    stored = master.data_dir / "bootstrap-tokens.json"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert forever.split(".")[1] not in stored.read_text()


def test_the_first_start_prints_a_join_command_on_a_terminal_only(tmp_path: Path) -> None:
    # Not a terminal (a log file): no token is made or printed, only where to get one.
    with running_master(tmp_path / "quiet", "--controllers=", "--bootstrap-tokens") as quiet:
        deadline = time.monotonic() + 30
        while "kubeling token create" not in quiet.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "no join token printed (not a terminal)" in quiet.log()
    assert not (tmp_path / "quiet" / "bootstrap-tokens.json").exists()

    data = tmp_path / "tty"
    leader, follower = pty.openpty()
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "kubeling.master.main",
            "--listen", f"127.0.0.1:{port}", "--data-dir", str(data),
            "--metrics-bind-address", "", "--controllers=", "--bootstrap-tokens",
        ],
        stdout=follower,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    os.close(follower)
    try:
        seen = b""
        deadline = time.monotonic() + 60
        while b"--token-file" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1)
            if ready:
                seen += os.read(leader, 4096)
        text = seen.decode(errors="replace")
        assert "--token-file /etc/kubeling/join-token" in text, text
        (token,) = SECRET.findall(text)
        kubelet_line = next(line for line in text.splitlines() if "kubeling-kubelet" in line)
        assert token not in kubelet_line

        async def join() -> None:
            async with Client(f"127.0.0.1:{port}", token=token) as api:
                await eventually_passes(lambda: api.nodes.create(node("first")), 30)

        asyncio.run(join())
    finally:
        stop_process(process)
        os.close(leader)


async def test_a_kubelet_joins_with_a_token_file_kept_off_its_command_line(
    guarded: MasterProcess, tmp_path: Path
) -> None:
    master = guarded
    token = await asyncio.to_thread(create, master, "--description", "kubelet test")
    token_file = tmp_path / "join-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    sock_dir = Path(tempfile.mkdtemp(prefix="klj-", dir="/tmp"))
    endpoint = f"unix://{sock_dir}/cri.sock"
    cri = FakeCRIServer(FakeRuntime(), endpoint)
    await cri.start()
    log = tmp_path / "kubelet.log"
    try:
        with log.open("ab") as out:
            process = await asyncio.to_thread(
                subprocess.Popen,
                [
                    sys.executable, "-m", "kubeling.kubelet.main",
                    "--master", master.address, "--node-name", "joined",
                    "--node-ip", "127.0.0.1", "--runtime-endpoint", endpoint,
                    "--listen", "127.0.0.1:0", "--healthz-bind-address", "127.0.0.1:0",
                    "--pod-log-dir", str(tmp_path / "pods"), "--token-file", str(token_file),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if k != "KUBELING_TOKEN"},
            )  # fmt: skip
        try:

            async def describe() -> str:
                return log.read_text(errors="replace")[-3000:]

            async with Client(master.address) as api:
                await eventually_passes(lambda: api.nodes.get("joined"), 30, describe=describe)
            # What `ps` shows: the kubelet's command line has no secret.
            proc_file = Path(f"/proc/{process.pid}/cmdline")
            cmdline = (await asyncio.to_thread(proc_file.read_bytes)).decode()
            assert "--token-file" in cmdline
            assert token.split(".")[1] not in cmdline
            assert token.split(".")[1] not in log.read_text(errors="replace")
        finally:
            await asyncio.to_thread(stop_process, process)
    finally:
        await cri.stop(0)
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert token.split(".")[1] not in master.log()
