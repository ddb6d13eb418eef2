"""`kubeling user add` against a real in-process master with TLS: the key is made
locally, the master signs a certificate with the role asked for, and the files
work for the CLI (NAME.conf) with exactly that role's rights."""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from kubeling.cli import config as cli_config
from kubeling.cli.commands import token as token_command
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.cli.main import build_parser, main
from kubeling.client import Client
from kubeling.client.config import read_config
from kubeling.common import pki
from kubeling.common.token import TOKEN_RE
from kubeling.master.server import Master
from kubeling.v1 import core_pb2
from tests.support.inprocess import tls_master


@pytest.fixture
async def master(tmp_path: Path) -> AsyncIterator[Master]:
    async with tls_master(tmp_path / "master") as (server, _):
        yield server


async def run(argv: list[str], config: Path) -> int:
    """One CLI command in this event loop (main() would start its own)."""
    args: argparse.Namespace = build_parser().parse_args(argv)
    ctx = Context(cli_config.resolve(None, config))
    status: int = await args.run(args, ctx)
    return status


def keys_in(directory: Path) -> list[Path]:
    return list(directory.glob("*.key"))


def pod(name: str) -> core_pb2.Pod:
    obj = core_pb2.Pod()
    obj.metadata.name = name
    obj.metadata.namespace = "default"
    obj.spec.containers.add(name="c", image="busybox")
    return obj


async def test_a_view_user_reads_but_cannot_write(
    master: Master, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "users"
    assert (
        await run(["user", "add", "alice", "--role", "view", "-o", str(out)], master.admin_conf)
        == 0
    )
    printed = capsys.readouterr().out
    assert f"--config {out / 'alice.conf'}" in printed and "grpcurl -cacert" in printed

    for name, mode in (("alice.conf", 0o600), ("alice.key", 0o600), ("alice.crt", 0o600)):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == mode, name
    conf = read_config(out / "alice.conf")
    admin = read_config(master.admin_conf)
    assert conf.server == admin.server and conf.credentials is not None
    assert (out / "ca.crt").read_bytes() == conf.credentials.ca_pem
    assert (out / "alice.key").read_bytes() == conf.credentials.key_pem
    info = pki.cert_info(conf.credentials.cert_pem)
    assert (info.common_name, info.organizations) == ("alice", ("kubeling:view",))

    async with Client(conf.server, timeout=10, credentials=conf.credentials) as api:
        await api.pods.list("default")
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await api.pods.create(pod("web"))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "alice" in (denied.value.details() or "")

    # The CLI says it in one line, naming the config it used.
    status = await asyncio.to_thread(
        main, ["--config", str(out / "alice.conf"), "delete", "pod", "web", "-n", "default"]
    )
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1
    assert err.startswith("Error from server (Forbidden):")
    assert f"credentials from {out / 'alice.conf'}" in err

    # A view user cannot issue credentials either.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await run(["user", "add", "mallory", "--role", "admin", "-o", str(out)], out / "alice.conf")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not (out / "mallory.conf").exists() and not (out / "mallory.key").exists()


async def test_an_edit_user_writes_and_files_are_not_overwritten(
    master: Master, tmp_path: Path
) -> None:
    out = tmp_path / "users"
    assert (
        await run(["user", "add", "bob", "--role", "edit", "-o", str(out)], master.admin_conf) == 0
    )
    conf = read_config(out / "bob.conf")
    async with Client(conf.server, timeout=10, credentials=conf.credentials) as api:
        created = await api.pods.create(pod("web"))
        assert created.metadata.name == "web"
    first_key = (out / "bob.key").read_bytes()
    with pytest.raises(CliError, match="exist; --force replaces them"):
        await run(["user", "add", "bob", "--role", "view", "-o", str(out)], master.admin_conf)
    assert (out / "bob.key").read_bytes() == first_key
    args = ["user", "add", "bob", "--role", "view", "-o", str(out), "--force"]
    assert await run(args, master.admin_conf) == 0
    assert (out / "bob.key").read_bytes() != first_key


@pytest.mark.parametrize("name", ["system:admin", "kubeling:master", "a/b", "x,O=system:masters"])
async def test_reserved_and_unusable_names_are_refused_before_any_call(
    tmp_path: Path, name: str
) -> None:
    # No master: the CLI refuses before dialing (the master refuses these too).
    config = tmp_path / "none.conf"
    config.write_text("server: 127.0.0.1:1\n")
    with pytest.raises(CliError, match=r"reserved|not a usable user name"):
        await run(["user", "add", name, "--role", "view", "-o", str(tmp_path)], config)
    assert not keys_in(tmp_path)


async def test_without_credentials_the_error_says_what_to_do(
    master: Master, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = read_config(master.admin_conf).server
    config = tmp_path / "plain.conf"
    config.write_text(f"server: {server}\n")
    argv = ["--config", str(config), "user", "add", "carol", "--role", "view", "-o", str(tmp_path)]
    status = await asyncio.to_thread(main, argv)
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1
    assert "--config PATH" in err and "admin.conf" in err
    assert not (tmp_path / "carol.key").exists()


async def test_token_create_prints_a_join_command_with_the_ca_pin(
    master: Master, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run(["token", "create", "--print-join-command"], master.admin_conf) == 0
    # (The in-process master logs to the same stdout: keep the command's lines.)
    prefixes = ("(umask", "kubeling-kubelet", "kubeling-proxy")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(prefixes)]
    assert len(lines) == 3, lines
    token = lines[0].split("echo ", 1)[1].split(" >", 1)[0]
    assert TOKEN_RE.match(token)
    assert lines[0].startswith("(umask 077;")  # the token file is private from the start
    pin = pki.ca_pin((tmp_path / "master" / "pki" / "ca.crt").read_bytes())
    for line, program in zip(lines[1:], ("kubeling-kubelet", "kubeling-proxy"), strict=True):
        assert line.startswith(f"{program} --master ")
        assert f"--discovery-token-ca-cert-hash {pin}" in line
        assert token not in line  # only the file's name is on the command line
    assert await run(["token", "list"], master.admin_conf) == 0
    assert token.partition(".")[0] in capsys.readouterr().out


def test_the_join_command_names_the_master_as_workers_reach_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("kubeling.common.machine.node_ip", lambda: "10.0.0.10")
    assert token_command.worker_address("10.0.0.5:6443") == "10.0.0.5:6443"
    assert token_command.worker_address("127.0.0.1:7443") == "10.0.0.10:7443"
    assert token_command.worker_address("unix:/run/m.sock") == "10.0.0.10:6443"
    # A list of masters: each as workers reach it, once.
    assert (
        token_command.worker_address("10.0.0.5:6443,10.0.0.6:6443,127.0.0.1:6443")
        == "10.0.0.5:6443,10.0.0.6:6443,10.0.0.10:6443"
    )


def test_the_grpcurl_line_for_a_master_list_names_one_master_and_the_shared_name() -> None:
    from pathlib import Path

    from kubeling.cli.commands.user import grpcurl_command

    line = grpcurl_command("10.0.0.5:6443,10.0.0.6:6443", Path("ca"), Path("c"), Path("k"))
    assert line.endswith("-servername kubernetes 10.0.0.5:6443")
