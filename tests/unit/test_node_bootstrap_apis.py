"""The node's own APIs once they serve TLS: the kubelet API answers only the
master's identity, the proxy API only readers of the cluster (admin, edit, view),
everyone else PERMISSION_DENIED naming them; and the proxy's Explain never holds
up rule programming. Everything listens on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeling.common import pki, rpc
from kubeling.common.tls import CredentialDir, Credentials
from kubeling.cri.fake import FakeRuntime
from kubeling.kubelet.directory import ContainerRef
from kubeling.kubelet.server import serve_kubelet_api
from kubeling.proxy import server as proxy_server
from kubeling.proxy.nft import FakeNftables
from kubeling.v1 import core_pb2, kubelet_pb2, proxy_pb2
from tests.unit.proxy.builders import make_kube_proxy


class EmptyNode:
    """A PodDirectory without pods."""

    node_name = "w1"

    def pods(self) -> list[core_pb2.Pod]:
        return []

    def find_pod(self, namespace: str, name: str) -> core_pb2.Pod | None:
        return None

    def find_container(
        self, namespace: str, name: str, container: str, previous: bool = False
    ) -> ContainerRef | None:
        return None


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.make_ca("node-api-test-ca")


def _user(ca: pki.Issued, name: str, *groups: str) -> Credentials:
    issued = pki.issue(ca, name, groups)
    return Credentials(ca.cert_pem, issued.cert_pem, issued.key_pem)


def _serving_dir(ca: pki.Issued, tmp_path: Path, name: str, user: str, group: str) -> CredentialDir:
    """A node's credential directory, as a join leaves it (server and client use)."""
    issued = pki.issue(ca, user, [group], server=True, client=True, ips=["127.0.0.1"])
    directory = CredentialDir(tmp_path / name, name)
    directory.save(Credentials(ca.cert_pem, issued.cert_pem, issued.key_pem))
    return directory


async def _call(
    port: int, credentials: Credentials | None, method: str, request: Any, response: Any
) -> Any:
    async with rpc.channel(f"127.0.0.1:{port}", credentials=credentials) as channel:
        call = channel.unary_unary(
            method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString,
        )
        return await call(request, timeout=10)


@pytest.fixture
async def kubelet_port(ca: pki.Issued, tmp_path: Path) -> AsyncIterator[int]:
    directory = _serving_dir(ca, tmp_path, "kubelet", "system:node:w1", "system:nodes")
    server = await serve_kubelet_api("127.0.0.1:0", EmptyNode(), FakeRuntime(), 0.02, directory)
    try:
        yield server.port
    finally:
        await server.stop(0)


async def _list_pods(port: int, credentials: Credentials | None) -> core_pb2.PodList:
    reply: core_pb2.PodList = await _call(
        port, credentials, "/kubeling.v1.Kubelet/ListPods",
        kubelet_pb2.KubeletListPodsRequest(), core_pb2.PodList,
    )  # fmt: skip
    return reply


async def test_the_kubelet_api_answers_the_master(kubelet_port: int, ca: pki.Issued) -> None:
    master = _user(ca, "kubeling:master", "system:masters")
    assert list((await _list_pods(kubelet_port, master)).items) == []


@pytest.mark.parametrize(
    ("user", "groups"),
    [
        ("kubeling-admin", ("system:masters",)),
        ("alice", ("kubeling:edit",)),
        ("system:node:w2", ("system:nodes",)),
        ("system:node:w1", ("system:nodes",)),  # not even the node itself
        ("kubeling:master", ("kubeling:view",)),  # the name without the group
    ],
)
async def test_the_kubelet_api_refuses_everyone_else_by_name(
    kubelet_port: int, ca: pki.Issued, user: str, groups: tuple[str, ...]
) -> None:
    caller = _user(ca, user, *groups)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _list_pods(kubelet_port, caller)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = refused.value.details() or ""
    assert f'"{user}"' in details and "kubeling.v1.Kubelet/ListPods" in details
    # Logs is a stream: refused the same way, before the pod is looked up.
    async with rpc.channel(f"127.0.0.1:{kubelet_port}", credentials=caller) as channel:
        logs = channel.unary_stream(
            "/kubeling.v1.Kubelet/Logs",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=core_pb2.LogChunk.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in logs(core_pb2.PodLogsRequest(name="nope"), timeout=10):
                pass
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "Kubelet/Logs" in (refused.value.details() or "")


async def test_the_kubelet_api_needs_a_certificate_of_the_cluster_ca(
    kubelet_port: int, ca: pki.Issued
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _list_pods(kubelet_port, Credentials(ca.cert_pem, b"", b""))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    stranger = pki.make_ca("stranger")
    impostor = pki.issue(stranger, "kubeling:master", ["system:masters"])
    forged = Credentials(ca.cert_pem, impostor.cert_pem, impostor.key_pem)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _list_pods(kubelet_port, forged)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


# -- the proxy API -----------------------------------------------------------------


@pytest.fixture
async def proxy_port(ca: pki.Issued, tmp_path: Path) -> AsyncIterator[int]:
    directory = _serving_dir(ca, tmp_path, "proxy", "system:kube-proxy:w1", "system:node-proxiers")
    server = await proxy_server.serve_proxy_api("127.0.0.1:0", make_kube_proxy(), directory)
    try:
        yield server.port
    finally:
        await server.stop(0)


async def _status(port: int, credentials: Credentials) -> proxy_pb2.ProxyStatus:
    reply: proxy_pb2.ProxyStatus = await _call(
        port, credentials, "/kubeling.v1.Proxy/Status",
        proxy_pb2.ProxyStatusRequest(), proxy_pb2.ProxyStatus,
    )  # fmt: skip
    return reply


@pytest.mark.parametrize(
    ("user", "group"),
    [
        ("kubeling:master", "system:masters"),
        ("kubeling-admin", "system:masters"),
        ("alice", "kubeling:edit"),
        ("bob", "kubeling:view"),
    ],
)
async def test_the_proxy_api_answers_readers(
    proxy_port: int, ca: pki.Issued, user: str, group: str
) -> None:
    assert (await _status(proxy_port, _user(ca, user, group))).node_name == "node-1"


@pytest.mark.parametrize(
    ("user", "group"),
    [
        ("system:node:w1", "system:nodes"),
        ("system:kube-proxy:w1", "system:node-proxiers"),
        ("mallory", "nobody"),
    ],
)
async def test_the_proxy_api_refuses_others_by_name(
    proxy_port: int, ca: pki.Issued, user: str, group: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _status(proxy_port, _user(ca, user, group))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f'"{user}"' in (refused.value.details() or "")


# -- Explain and rule programming --------------------------------------------------


class SlowReads(FakeNftables):
    """Reads that block until released, as listing a huge table does."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.reading = threading.Event()

    def map_value(self, map_name: str, key: str) -> str | None:
        self.reading.set()
        self.release.wait(30)
        return super().map_value(map_name, key)


async def test_explain_never_holds_up_a_sync() -> None:
    backend = SlowReads()
    proxy = make_kube_proxy(backend)
    service = proxy_server.ProxyService(proxy)
    request = proxy_pb2.ExplainRequest(address="10.96.0.10", port=80)
    explains = [asyncio.create_task(service.explain(request, None)) for _ in range(12)]
    try:
        assert await asyncio.to_thread(backend.reading.wait, 10)
        # Twelve Explain calls stuck in the kernel: a sync still goes through at once.
        started = time.monotonic()
        assert await asyncio.wait_for(proxy.sync_once(full=True), 5)
        assert time.monotonic() - started < 2
        assert backend.transactions == 1
        # Beyond the waiting limit a caller is told to come back.
        more = [
            asyncio.create_task(service.explain(request, None))
            for _ in range(proxy_server.MAX_EXPLAIN_WAITING)
        ]
        await asyncio.sleep(0.2)
        done = [t for t in more if t.done()]
        errors = [t.exception() for t in done]
        assert len(errors) == 12  # 12 + 16 calls, 16 may wait
        assert all(getattr(e, "code", None) == grpc.StatusCode.RESOURCE_EXHAUSTED for e in errors)
        explains += [t for t in more if not t.done()]
    finally:
        backend.release.set()
    replies = await asyncio.wait_for(asyncio.gather(*explains), 30)
    assert all(r.verdict == "none" for r in replies)
    service.close()
