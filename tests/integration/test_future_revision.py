"""A Watch, a List or a List continued at a resourceVersion the store has not reached is
refused ("Too large resource version", OUT_OF_RANGE), by the Python client and by
grpcurl alike, against a real master process."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import grpc
import pytest

from kubeling.client import Client
from kubeling.v1 import core_pb2
from tests.support.processes import MasterProcess


def make_pod(name: str) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = "default"
    pod.spec.containers.add(name="main", image="busybox:1.36")
    return pod


def continue_token(rev: int, start: str) -> str:
    """A token shaped as the master makes them (base64url JSON, no padding)."""
    raw = json.dumps({"rv": rev, "start": start}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def current_revision(api: Client) -> int:
    return int((await api.pods.list("default")).resource_version)


@pytest.mark.asyncio(loop_scope="session")
async def test_watch_from_a_future_revision_is_refused(api: Client) -> None:
    await api.pods.create(make_pod("future-watch"))
    current = await current_revision(api)
    events = api.pods.watch("default", resource_version=str(current + 1000))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await anext(events)
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert info.value.details() == (
        f"Too large resource version: {current + 1000}, current: {current}"
    )
    # The current revision itself is fine: the watch is open and hears the next write.
    watch = api.pods.watch("default", resource_version=str(current))
    await api.pods.create(make_pod("future-watch-2"))
    event = await anext(watch)
    assert (event.type, event.object.metadata.name) == ("ADDED", "future-watch-2")
    await watch.aclose()


@pytest.mark.asyncio(loop_scope="session")
async def test_list_continued_at_a_future_revision_is_refused(api: Client) -> None:
    for i in range(3):
        await api.pods.create(make_pod(f"future-list-{i}"))
    current = await current_revision(api)
    first = await api.pods.list_page("default", limit=1)
    assert first.continue_token
    token = continue_token(current + 5, first.items[0].metadata.name)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.pods.list_page("default", limit=1, continue_token=token)
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "Too large resource version" in (info.value.details() or "")
    # The server's own token still pages through.
    second = await api.pods.list_page("default", limit=1, continue_token=first.continue_token)
    assert second.items[0].metadata.name > first.items[0].metadata.name


@pytest.mark.asyncio(loop_scope="session")
async def test_list_at_a_future_revision_is_refused(api: Client) -> None:
    await api.pods.create(make_pod("future-plain-list"))
    current = await current_revision(api)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.pods.list_page("default", resource_version=str(current + 7))
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert info.value.details() == (
        f"Too large resource version: {current + 7}, current: {current}"
    )
    # A revision already reached (or "0") is served from the current state.
    page = await api.pods.list_page("default", resource_version=str(current))
    assert "future-plain-list" in {p.metadata.name for p in page.items}
    assert int(page.resource_version) >= current
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await api.pods.list_page("default", resource_version="yesterday")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_grpcurl_watch_from_a_future_revision(master: MasterProcess, bin_path: Path) -> None:
    watch = subprocess.run(
        [str(bin_path / "grpcurl"), "-plaintext", "-d",
         '{"namespace":"default","resourceVersion":"999999999"}',
         master.address, "kubeling.v1.Pods/Watch"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert watch.returncode != 0
    assert "Code: OutOfRange" in watch.stderr, watch.stderr
    assert "Too large resource version: 999999999, current: " in watch.stderr
