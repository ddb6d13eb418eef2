"""ExecStream, Attach, PortForward and Top through a TLS master: who may open a
session (edit and admin; view is refused before anything reaches a kubelet), that
an allowed one is relayed to the pod's kubelet (whose fake runtime has no
streaming server and says so), and the master's own refusals."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeling.client import Client
from kubeling.client.pods import open_attach, open_exec, open_port_forward, pod_top
from kubeling.common import identity
from kubeling.cri.fake import FakeRuntime
from kubeling.kubelet.server import serve_kubelet_api
from kubeling.v1 import core_pb2
from tests.integration.test_kubelet_api import FakeNode, make_pod
from tests.integration.test_tls_master import client_as
from tests.integration.test_tls_master_pod_proxy import kubelet_credentials, node_object
from tests.support.inprocess import tls_master

Opener = Callable[[Client], Awaitable[Any]]
SESSIONS: dict[str, Opener] = {
    "pods/exec": lambda api: open_exec(api, "web", ["sh"], stdin=True, tty=True),
    "pods/attach": lambda api: open_attach(api, "web", stdin=True),
    "pods/portforward": lambda api: open_port_forward(api, "web", 80),
}


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            pass
    return raised.value


async def test_who_may_open_sessions(tmp_path: Path) -> None:
    async with tls_master(tmp_path / "master") as (master, admin):
        fake = FakeNode(FakeRuntime(), tmp_path / "pods", node_name="node-1")
        creds = kubelet_credentials(master, "node-1", tmp_path / "kubelet")
        kubelet = await serve_kubelet_api("127.0.0.1:0", fake, fake.runtime, 0.02, creds)
        viewer = client_as(master, "vi", identity.GROUP_VIEW)
        editor = client_as(master, "ed", identity.GROUP_EDIT)
        try:
            await admin.nodes.create(node_object("node-1", kubelet.port))
            pod = make_pod("web", "app")
            pod.spec.node_name = "node-1"
            await fake.run_pod(await admin.pods.create(pod))
            for resource, open_session in SESSIONS.items():
                refused = await failure(await open_session(viewer))
                assert refused.code() == grpc.StatusCode.PERMISSION_DENIED, resource
                assert f'cannot create {resource} "web" in namespace "default"' in (
                    refused.details() or ""
                )
                assert "may not reach into containers" in (refused.details() or "")
                for who in (editor, admin):
                    # Allowed: relayed to the kubelet, whose fake runtime cannot stream.
                    answered = await failure(await open_session(who))
                    assert answered.code() in (
                        grpc.StatusCode.UNIMPLEMENTED,
                        grpc.StatusCode.FAILED_PRECONDITION,
                    ), (resource, answered)
                    assert "streaming server" in (answered.details() or "") or (
                        "sandbox" in (answered.details() or "")
                    ), answered.details()
            # Top is a read: view may.
            usage = await pod_top(viewer, "default")
            assert list(usage.unreachable_nodes) == []
        finally:
            await viewer.close()
            await editor.close()
            await kubelet.stop(0)


async def test_master_refusals(tmp_path: Path) -> None:
    async with tls_master(tmp_path / "master") as (_, admin):
        pending = make_pod("pending", "app")
        await admin.pods.create(pending)
        call = await open_exec(admin, "pending", ["sh"])
        refused = await failure(call)
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not scheduled yet" in (refused.details() or "")
        refused = await failure(await open_exec(admin, "missing", ["sh"]))
        assert refused.code() == grpc.StatusCode.NOT_FOUND
        # A stream that does not start with `start`.
        stream = admin.channel.stream_stream(
            "/kubeling.v1.Pods/ExecStream",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=core_pb2.ExecStreamResponse.FromString,
        )()
        await stream.write(core_pb2.ExecStreamRequest(stdin=b"x"))
        await stream.done_writing()
        refused = await failure(stream)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.details() == (
            "start: Required value: the first ExecStreamRequest must be start"
        )
