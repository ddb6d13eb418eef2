"""Malformed and hostile requests get clear errors; the server and its data survive."""

from __future__ import annotations

import grpc
import pytest

from kubeling.api.errors import field_violations
from kubeling.client import Client
from kubeling.v1 import core_pb2
from tests.support.processes import MasterProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def call_raw(address: str, method: str, payload: bytes) -> grpc.aio.AioRpcError | bytes:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = channel.unary_unary(method)
        try:
            return await stub(payload, timeout=5)  # type: ignore[no-any-return]
        except grpc.aio.AioRpcError as exc:
            return exc


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff\xff",  # not protobuf at all
        b"\x0a\x05\x0a\x03\x1a",  # truncated nested message
        b"\x12\x04abcd",  # wrong wire type for the pod field
        b"\x0a" + b"\xff" * 12,  # absurd length
    ],
)
async def test_garbage_bytes_do_not_hurt(
    master: MasterProcess, api: Client, payload: bytes
) -> None:
    result = await call_raw(master.address, "/kubeling.v1.Pods/Create", payload)
    assert isinstance(result, grpc.aio.AioRpcError)
    assert result.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    assert (await api.namespaces.get("default")).metadata.name == "default"


async def test_missing_object_in_request(master: MasterProcess) -> None:
    result = await call_raw(master.address, "/kubeling.v1.Pods/Create", b"")
    assert isinstance(result, grpc.aio.AioRpcError)
    assert result.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pod" in (result.details() or "")


async def test_huge_names_and_labels_are_rejected(api: Client) -> None:
    pod = core_pb2.Pod()
    pod.metadata.name = "a" * 100_000
    pod.metadata.labels["k" * 300] = "v" * 300
    pod.spec.containers.add(name="c", image="busybox")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.pods.create(pod)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in field_violations(info.value)}
    assert "metadata.name" in fields
    assert any(f.startswith("metadata.labels") for f in fields)


async def test_oversized_message_is_refused(master: MasterProcess, api: Client) -> None:
    pod = core_pb2.Pod()
    pod.metadata.name = "big"
    pod.metadata.annotations["blob"] = "x" * (20 * 1024 * 1024)
    pod.spec.containers.add(name="c", image="busybox")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.pods.create(pod)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (await api.namespaces.get("default")).metadata.name == "default"


async def test_wrong_kind_or_api_version_is_rejected(api: Client) -> None:
    pod = core_pb2.Pod(api_version="apps/v1", kind="Pod")
    pod.metadata.name = "wrong"
    pod.spec.containers.add(name="c", image="busybox")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.pods.create(pod)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(info.value)[0].field == "apiVersion"


async def test_failed_writes_leave_data_intact(api: Client) -> None:
    good = core_pb2.Pod()
    good.metadata.name = "intact"
    good.spec.containers.add(name="c", image="busybox")
    created = await api.pods.create(good)
    broken = core_pb2.Pod()
    broken.CopyFrom(created)
    broken.spec.containers[0].image = ""
    broken.spec.containers[0].ports.add(container_port=70000)
    with pytest.raises(grpc.aio.AioRpcError):
        await api.pods.update(broken)
    assert await api.pods.get("intact", "default") == created
