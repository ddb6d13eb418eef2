"""Interactive sessions end to end without containerd: client and CLI -> master
(PodProxy relaying bidirectional streams) -> kubelet API -> FakeRuntime, whose
fake streaming server speaks websocket v4.channel.k8s.io (cri/fake/streaming.py).
So the websocket framing, the channel protocol, the relays and the CLI's terminal
handling are all exercised here, on loopback, in a second."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kubeling.client import Client
from kubeling.client.pods import open_attach, open_exec, open_port_forward
from kubeling.cri.fake import FakeRuntime
from kubeling.kubelet.server import serve_kubelet_api
from kubeling.master.pod_proxy import PodProxy
from kubeling.master.server import Master, MasterConfig
from kubeling.v1 import core_pb2
from tests.integration.test_kubelet_api import FakeNode, make_pod
from tests.integration.test_logs_exec import node_object
from tests.support.inprocess import serving
from tests.support.terminal import Pty
from tests.support.waiting import eventually_passes

pytestmark = pytest.mark.asyncio(loop_scope="session")

KUBELING = Path(sys.executable).parent / "kubeling"


@pytest.fixture(scope="module")
async def cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Client, FakeNode]]:
    base = tmp_path_factory.mktemp("sessions")
    node = FakeNode(FakeRuntime(streaming=True), base / "pods")
    kubelet = await serve_kubelet_api("127.0.0.1:0", node, node.runtime, poll_interval=0.02)
    master = Master(MasterConfig(listen="127.0.0.1:0", tls=False, data_dir=base / "master"))
    proxy = PodProxy(master.registries["Pod"], master.registries["Node"])
    master.extra_methods["Pod"] = proxy.methods()
    try:
        async with serving(master) as api:
            await api.nodes.create(node_object("node-1", "127.0.0.1", kubelet.port))
            pod = make_pod("box", "main", FAKE_EXEC_EXIT_CODE="5")
            pod.spec.node_name = "node-1"
            await node.run_pod(await api.pods.create(pod))
            yield api, node
    finally:
        await proxy.close()
        await kubelet.stop(0)
        await node.runtime.close_streaming()


async def drain(call: Any) -> tuple[bytes, bytes, list[tuple[int, str]]]:
    out, err, exits = b"", b"", []
    async for message in call:
        kind = message.WhichOneof("kind")
        if kind == "stdout":
            out += message.stdout
        elif kind == "stderr":
            err += message.stderr
        else:
            exits.append((message.exit.exit_code, message.exit.message))
    return out, err, exits


async def test_exec_output_and_exit_codes(cluster: tuple[Client, FakeNode]) -> None:
    api, _ = cluster
    assert await drain(await open_exec(api, "box", ["echo", "a", "b"])) == (
        b"a b\n",
        b"",
        [(0, "")],
    )
    assert await drain(await open_exec(api, "box", ["false"])) == (b"", b"", [(1, "")])
    # The container's scripted exit code, through the NonZeroExitCode status.
    assert await drain(await open_exec(api, "box", ["anything"])) == (b"", b"", [(5, "")])


async def test_exec_stdin_resize_and_exit(cluster: tuple[Client, FakeNode]) -> None:
    api, _ = cluster
    call = await open_exec(api, "box", ["sh"], stdin=True, tty=True, size=(100, 30))
    await call.write(core_pb2.ExecStreamRequest(stdin=b"stty size\r"))
    await call.write(core_pb2.ExecStreamRequest(resize=core_pb2.TerminalSize(width=7, height=9)))
    await call.write(core_pb2.ExecStreamRequest(stdin=b"stty size\rexit 3\r"))
    out, _, exits = await drain(call)
    assert b"30 100\r\n" in out and b"9 7\r\n" in out
    assert exits == [(3, "")]


async def test_attach_and_cancel_closes_the_runtime_session(
    cluster: tuple[Client, FakeNode],
) -> None:
    api, node = cluster
    server = node.runtime.streaming
    assert server is not None
    call = await open_attach(api, "box", stdin=True)
    await call.write(core_pb2.ExecStreamRequest(stdin=b"ping"))
    message = await call.read()
    assert message.stdout == b"ping"
    assert server.open_sessions == 1
    call.cancel()  # the user went away: master and kubelet end the session too

    async def closed() -> bool:
        return server.open_sessions == 0

    await eventually_passes(closed, 10)


async def test_port_forward_relays_bytes_both_ways(cluster: tuple[Client, FakeNode]) -> None:
    api, _ = cluster
    call = await open_port_forward(api, "box", 8080)
    big = os.urandom(300_000)
    await call.write(core_pb2.PortForwardRequest(data=big))
    received = b""
    while len(received) < len(big):
        message = await call.read()
        assert message.WhichOneof("kind") == "data"
        received += message.data
    assert received == big
    call.cancel()


async def test_cli_exec_it_through_a_pty(cluster: tuple[Client, FakeNode]) -> None:
    api, _ = cluster
    term = Pty(
        [str(KUBELING), "--server", api.target, "exec", "-it", "box", "--", "sh"], rows=12, cols=34
    )
    try:
        term.write(b"stty size\r")
        await term.read_until(b"12 34\r\n")
        term.write(b"echo typed words\r")
        await term.read_until(b"typed words\r\n")
        term.write(b"exit 6\r")
        assert await term.wait() == 6
        assert b"command terminated with exit code 6" in await term.read_until(b"code 6")
    finally:
        term.close()


async def test_cli_exec_errors(cluster: tuple[Client, FakeNode]) -> None:
    api, _ = cluster
    proc = await asyncio.create_subprocess_exec(
        str(KUBELING), "--server", api.target, "exec", "-i", "nope", "--", "sh",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert b'pods "nope" in namespace "default" not found' in err


async def test_grpcurl_calls_the_session_and_top_rpcs(cluster: tuple[Client, FakeNode]) -> None:
    api, _ = cluster
    grpcurl = str(Path(sys.executable).parent / "grpcurl")

    async def call(data: str, method: str) -> list[Any]:
        proc = await asyncio.create_subprocess_exec(
            grpcurl, "-plaintext", "-d", data, api.target, method,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        decoder, text, found = json.JSONDecoder(), out.decode().strip(), []
        while text:
            value, end = decoder.raw_decode(text)
            found.append(value)
            text = text[end:].strip()
        return found

    messages = await call(
        '{"start":{"name":"box","command":["echo","hi"]}}', "kubeling.v1.Pods/ExecStream"
    )
    assert messages[0] == {"stdout": base64.b64encode(b"hi\n").decode()}
    assert messages[-1] == {"exit": {}}  # exit code 0, no message
    (top,) = await call('{"namespace":"default"}', "kubeling.v1.Pods/Top")
    assert isinstance(top, dict)
