"""A master started with a join token registers only nodes that present it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kubeling.client import Client
from kubeling.master.main import join_command
from kubeling.v1 import core_pb2
from tests.support.processes import MasterProcess, running_master


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MasterProcess, str]]:
    base = tmp_path_factory.mktemp("guarded")
    token_file = base / "join-token"
    with running_master(base, "--controllers=", "--join-token-file", str(token_file)) as proc:
        token = token_file.read_text().strip()
        assert token_file.stat().st_mode & 0o777 == 0o600
        yield proc, token


def node(name: str) -> core_pb2.Node:
    obj = core_pb2.Node()
    obj.metadata.name = name
    return obj


async def test_registering_a_node_needs_the_token(guarded: tuple[MasterProcess, str]) -> None:
    master, token = guarded
    async with Client(master.address) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await anonymous.nodes.create(node("intruder"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "--token" in (refused.value.details() or "")
        # Everything else is as before (the token guards joining, not the API).
        assert (await anonymous.nodes.list()).items == []
    async with Client(master.address, token="wrong.token") as wrong:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await wrong.nodes.create(node("guess"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with Client(master.address, token=token) as worker:
        created = await worker.nodes.create(node("worker-1"))
        assert created.metadata.uid
        # The token rides on streams too.
        events = worker.nodes.watch()
        first = await anext(aiter(events))
        assert first.object.metadata.name == "worker-1"


def test_the_master_prints_the_join_command(guarded: tuple[MasterProcess, str]) -> None:
    master, token = guarded
    assert f"--token {token}" in master.log()
    assert join_command("10.0.0.5:6443", "", "t.k") == (
        "kubeling-kubelet --master 10.0.0.5:6443 --token t.k --node-name $(hostname)"
    )
    assert join_command("0.0.0.0:6443,unix:/x", "master.example", "t.k").startswith(
        "kubeling-kubelet --master master.example:6443 "
    )


def test_token_file_is_kept_across_restarts(tmp_path: Path) -> None:
    from kubeling.common.token import load_or_create

    path = tmp_path / "t"
    first = load_or_create(path)
    assert load_or_create(path) == first and len(first) == 23
