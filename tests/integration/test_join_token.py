"""Joining a real master with TLS (kubeadm's flow), with real processes: bootstrap
tokens made, listed and deleted with `kubeling token` as the master's admin (a view
user may not); expired, deleted and unknown tokens refused at the join port; the
first start prints a join command, with the CA's pin, on a terminal only; a real
kubelet joins with --token-file, keeps its certificate 0600, registers with it,
and no secret is on its command line or in any log."""

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

import pytest

from kubeling.client import Client, bootstrap
from kubeling.common import pki
from kubeling.common.tls import CredentialDir
from kubeling.common.token import TOKEN_RE
from kubeling.cri.fake import FakeCRIServer, FakeRuntime
from tests.support.processes import MasterProcess, running_master, stop_process
from tests.support.waiting import eventually_passes

KUBELING = Path(sys.executable).parent / "kubeling"
SECRET = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MasterProcess]:
    """A real master, TLS on (the default), loopback only, no controllers."""
    with running_master(tmp_path_factory.mktemp("joinmaster"), "--controllers=", tls=True) as proc:
        yield proc


def kubeling(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(KUBELING), "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def create(master: MasterProcess, *args: str) -> str:
    result = kubeling(master.admin_conf, "token", "create", *args)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert TOKEN_RE.match(token), token
    return token


async def join_refused(master: MasterProcess, token: str, tmp_path: Path) -> str:
    """Join as a node with `token`: the master's UNAUTHENTICATED answer."""
    ca = await asyncio.to_thread(bootstrap.fetch_ca, master.join_address, master.pin)
    cred_dir = CredentialDir(tmp_path / "refused", "kubelet")
    with pytest.raises(bootstrap.BootstrapError) as refused:
        await bootstrap.join(
            master.join_address, ca, token, bootstrap.ROLE_NODE, "late", ["127.0.0.1"], cred_dir
        )
    assert "UNAUTHENTICATED" in str(refused.value), refused.value
    assert not cred_dir.exists()
    return str(refused.value)


def test_token_create_list_and_delete(master: MasterProcess, tmp_path: Path) -> None:
    forever = create(master, "--ttl", "0", "--description", "for ever")
    daily = create(master, "--description", "default ttl")
    hourly = create(master, "--ttl", "1h", "--description", "the lab")
    listing = kubeling(master.admin_conf, "token", "list")
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    assert listing.stdout.splitlines()[0].split() == ["ID", "TTL", "EXPIRES", "DESCRIPTION"]
    assert "<forever>" in rows[forever[:6]] and "for ever" in rows[forever[:6]]
    assert re.search(r"\b2[34]h\b", rows[daily[:6]]), rows[daily[:6]]
    assert re.search(r"\b(59m|60m)\b", rows[hourly[:6]]) and "the lab" in rows[hourly[:6]]
    # The list never shows a secret.
    for token in (forever, daily, hourly):
        assert token.split(".")[1] not in listing.stdout
    result = kubeling(master.admin_conf, "token", "delete", forever, daily[:6])  # token or ID
    assert result.returncode == 0, result.stderr
    listing = kubeling(master.admin_conf, "token", "list")
    assert forever[:6] not in listing.stdout and daily[:6] not in listing.stdout
    missing = kubeling(master.admin_conf, "token", "delete", "abcdef")
    assert missing.returncode == 1 and "abcdef not found" in missing.stderr
    bad = kubeling(master.admin_conf, "token", "create", "--ttl", "soon")
    assert bad.returncode == 1 and "--ttl" in bad.stderr
    # The tokens live in the store (shared by every master), as hashes only.
    assert not (master.data_dir / "bootstrap-tokens.json").exists()
    on_disk = b"".join(p.read_bytes() for p in master.data_dir.glob("state.db*"))
    assert on_disk and hourly.split(".")[1].encode() not in on_disk

    # Tokens are an admin's business: a view user is refused, in one line naming
    # the config it used.
    users = tmp_path / "users"
    added = kubeling(master.admin_conf, "user", "add", "viewer", "--role", "view", "-o", str(users))
    assert added.returncode == 0, added.stderr
    denied = kubeling(users / "viewer.conf", "token", "create")
    assert denied.returncode == 1 and denied.stdout == ""
    assert denied.stderr.startswith("Error from server (Forbidden):"), denied.stderr
    assert "viewer" in denied.stderr and str(users / "viewer.conf") in denied.stderr
    # Without any credential the master does not even talk.
    plain = tmp_path / "plain.conf"
    plain.write_text(f"server: {master.address}\n")
    refused = kubeling(plain, "token", "list")
    assert refused.returncode == 1, refused.stderr
    assert "has no client certificate" in refused.stderr and "--config PATH" in refused.stderr


async def test_expired_deleted_and_unknown_tokens_are_refused_at_join(
    master: MasterProcess, tmp_path: Path
) -> None:
    short = await asyncio.to_thread(create, master, "--ttl", "1ms")
    assert f"bootstrap token {short[:6]} expired at" in await join_refused(master, short, tmp_path)
    gone = await asyncio.to_thread(create, master)
    deleted = await asyncio.to_thread(kubeling, master.admin_conf, "token", "delete", gone[:6])
    assert deleted.returncode == 0, deleted.stderr
    assert "unknown bootstrap token" in await join_refused(master, gone, tmp_path)
    assert "unknown bootstrap token" in await join_refused(
        master, "zzzzzz.0123456789abcdef", tmp_path
    )
    assert "malformed" in await join_refused(master, "wrong.token", tmp_path)
    for token in (short, gone):
        assert token.split(".")[1] not in master.log()


def test_the_first_start_prints_a_join_command_on_a_terminal_only(tmp_path: Path) -> None:
    # Not a terminal (a log file): no token is made or printed, only where to get one.
    with running_master(tmp_path / "quiet", "--controllers=", tls=True) as quiet:
        deadline = time.monotonic() + 30
        while "kubeling token create" not in quiet.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "no join token printed (not a terminal)" in quiet.log()
    assert not (quiet.data_dir / "bootstrap-tokens.json").exists()

    tty = MasterProcess(tmp_path / "tty", None, "--controllers=", tls=True)
    leader, follower = pty.openpty()
    tty.process = subprocess.Popen(
        tty.command(),
        stdout=follower,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    os.close(follower)
    try:
        seen = b""
        deadline = time.monotonic() + 60
        while b"admin credential" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1)
            if ready:
                seen += os.read(leader, 4096)
        text = seen.decode(errors="replace")
        assert "--token-file /etc/kubeling/join-token" in text, text
        (token,) = SECRET.findall(text)
        kubelet_line = next(line for line in text.splitlines() if "kubeling-kubelet" in line)
        assert token not in kubelet_line
        assert f"--discovery-token-ca-cert-hash {tty.pin}" in kubelet_line
        assert f"--join-address {tty.join_address}" in kubelet_line

        async def join() -> None:
            ca = await asyncio.to_thread(bootstrap.fetch_ca, tty.join_address, tty.pin)
            cred_dir = CredentialDir(tmp_path / "first", "kubelet")
            await bootstrap.join(
                tty.join_address, ca, token, bootstrap.ROLE_NODE, "first", ["127.0.0.1"], cred_dir
            )
            assert cred_dir.exists()

        asyncio.run(join())
    finally:
        stop_process(tty.process)
        os.close(leader)


async def test_a_kubelet_joins_with_a_token_file_kept_off_its_command_line(
    master: MasterProcess, tmp_path: Path
) -> None:
    token = await asyncio.to_thread(create, master, "--description", "kubelet test")
    token_file = tmp_path / "join-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    cert_dir = tmp_path / "kubelet-pki"
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
                    "--join-address", master.join_address,
                    "--discovery-token-ca-cert-hash", master.pin,
                    "--token-file", str(token_file), "--cert-dir", str(cert_dir),
                    "--node-ip", "127.0.0.1", "--runtime-endpoint", endpoint,
                    "--listen", "127.0.0.1:0", "--healthz-bind-address", "127.0.0.1:0",
                    "--pod-log-dir", str(tmp_path / "pods"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if k != "KUBELING_TOKEN"},
            )  # fmt: skip
        try:

            async def describe() -> str:
                return log.read_text(errors="replace")[-3000:]

            async with Client.from_config(master.admin_conf) as api:
                node = await eventually_passes(
                    lambda: api.nodes.get("joined"), 30, describe=describe
                )
            assert node.metadata.name == "joined"
            # Its own certificate, private, for its own identity.
            key = cert_dir / "kubelet.key"
            assert key.stat().st_mode & 0o777 == 0o600
            info = pki.cert_info((cert_dir / "kubelet.crt").read_bytes())
            assert (info.common_name, info.organizations) == (
                "system:node:joined",
                ("system:nodes",),
            )
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
