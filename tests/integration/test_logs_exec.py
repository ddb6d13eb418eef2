"""Logs and exec end to end: client and `kubeling` CLI -> master (PodProxy) -> the
node's kubelet API -> FakeRuntime and CRI log files. The master runs in-process
with PodProxy wired in; everything talks over loopback gRPC."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from kubeling.client import Client
from kubeling.client.pods import pod_exec, pod_logs
from kubeling.cri.fake import FakeRuntime
from kubeling.kubelet.server import serve_kubelet_api
from kubeling.master.pod_proxy import PodProxy
from kubeling.master.server import Master, MasterConfig
from kubeling.v1 import core_pb2
from tests.integration.test_kubelet_api import FakeNode, cri_line, make_pod
from tests.support.inprocess import serving
from tests.support.processes import free_port

pytestmark = pytest.mark.asyncio(loop_scope="session")

KUBELING = Path(sys.executable).parent / "kubeling"


class CountingNode(FakeNode):
    """Counts lookups, which a followed log makes on every poll."""

    lookups = 0

    def find_container(
        self, namespace: str, name: str, container: str, previous: bool = False
    ) -> object:
        self.lookups += 1
        return super().find_container(namespace, name, container, previous)


@dataclass
class Cluster:
    master: Master
    address: str
    api: Client
    node: CountingNode

    async def run_pod(self, pod: core_pb2.Pod, node_name: str = "node-1") -> core_pb2.Pod:
        """Create the pod bound to `node_name` and, on node-1, start its containers."""
        pod.spec.node_name = node_name
        created = await self.api.pods.create(pod)
        if node_name == self.node.node_name:
            await self.node.run_pod(created)
        return created


def node_object(name: str, address: str | None, port: int) -> core_pb2.Node:
    node = core_pb2.Node()
    node.metadata.name = name
    if address is not None:
        node.status.addresses.add(type="Hostname", address=name)
        node.status.addresses.add(type="InternalIP", address=address)
    node.status.daemon_endpoints.kubelet_endpoint.port = port
    return node


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    base = tmp_path_factory.mktemp("logs-exec")
    node = CountingNode(FakeRuntime(), base / "pods")
    kubelet = await serve_kubelet_api("127.0.0.1:0", node, node.runtime, poll_interval=0.02)
    master = Master(MasterConfig(listen="127.0.0.1:0", tls=False, data_dir=base / "master"))
    proxy = PodProxy(master.registries["Pod"], master.registries["Node"])
    master.extra_methods["Pod"] = proxy.methods()
    try:
        async with serving(master) as api:
            await api.nodes.create(node_object("node-1", "127.0.0.1", kubelet.port))
            # A node whose kubelet is down, and one that never said where its kubelet is.
            await api.nodes.create(node_object("dead-node", "127.0.0.1", free_port()))
            await api.nodes.create(node_object("mute-node", None, 0))
            yield Cluster(master, api.target, api, node)
    finally:
        await proxy.close()
        await kubelet.stop(0)


async def read(chunks: AsyncIterator[str]) -> str:
    return "".join([c async for c in chunks])


async def expect_error(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    return info.value.details() or ""


# -- the client ------------------------------------------------------------------


async def test_logs_through_the_master(cluster: Cluster) -> None:
    await cluster.run_pod(make_pod("web", "app"))
    cluster.node.log("default", "web", "app", cri_line("one"), cri_line("two"))
    assert await read(pod_logs(cluster.api, "web")) == "one\ntwo\n"
    assert await read(pod_logs(cluster.api, "web", container="app", tail_lines=1)) == "two\n"
    stamped = await read(pod_logs(cluster.api, "web", tail_lines=1, timestamps=True))
    assert stamped.endswith("Z two\n")
    assert await read(pod_logs(cluster.api, "web", since_seconds=3600)) == "one\ntwo\n"


async def test_logs_errors(cluster: Cluster) -> None:
    await cluster.run_pod(make_pod("pair", "a", "b"))
    await cluster.api.pods.create(make_pod("unscheduled", "app"))
    api = cluster.api
    details = await expect_error(read(pod_logs(api, "nope")), grpc.StatusCode.NOT_FOUND)
    assert details == 'pods "nope" in namespace "default" not found'
    # The kubelet's own errors come back unchanged.
    details = await expect_error(read(pod_logs(api, "pair")), grpc.StatusCode.INVALID_ARGUMENT)
    assert details == "a container name must be specified for pod pair, choose one of: [a b]"
    details = await expect_error(
        read(pod_logs(api, "pair", container="c")), grpc.StatusCode.NOT_FOUND
    )
    assert details == 'container "c" not found in pod "pair"'
    details = await expect_error(
        read(pod_logs(api, "unscheduled")), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "is not scheduled yet" in details


async def test_unreachable_kubelet(cluster: Cluster) -> None:
    await cluster.run_pod(make_pod("stranded", "app"), node_name="dead-node")
    await cluster.run_pod(make_pod("lost", "app"), node_name="mute-node")
    await cluster.run_pod(make_pod("orphan", "app"), node_name="no-such-node")
    details = await expect_error(
        read(pod_logs(cluster.api, "stranded")), grpc.StatusCode.UNAVAILABLE
    )
    assert 'cannot reach the kubelet of node "dead-node" at 127.0.0.1:' in details
    details = await expect_error(
        pod_exec(cluster.api, "stranded", ["ls"]), grpc.StatusCode.UNAVAILABLE
    )
    assert "dead-node" in details
    details = await expect_error(read(pod_logs(cluster.api, "lost")), grpc.StatusCode.UNAVAILABLE)
    assert "reports no InternalIP or Hostname" in details
    details = await expect_error(read(pod_logs(cluster.api, "orphan")), grpc.StatusCode.NOT_FOUND)
    assert "no-such-node" in details


async def test_follow_streams_and_ends_with_the_container(cluster: Cluster) -> None:
    await cluster.run_pod(make_pod("follow", "app"))
    node = cluster.node
    node.log("default", "follow", "app", cri_line("start"))
    seen = ""
    async with asyncio.timeout(10):
        async for text in pod_logs(cluster.api, "follow", follow=True):
            seen += text
            if seen == "start\n":
                node.log("default", "follow", "app", cri_line("more"), cri_line("end"))
                await node.stop_container("default", "follow", "app")
    assert seen == "start\nmore\nend\n"


async def test_cancelling_a_followed_log_stops_the_kubelet_stream(cluster: Cluster) -> None:
    await cluster.run_pod(make_pod("tailed", "app"))
    cluster.node.log("default", "tailed", "app", cri_line("hello"))
    chunks = pod_logs(cluster.api, "tailed", follow=True)
    assert await anext(chunks) == "hello\n"
    before = cluster.node.lookups
    await asyncio.sleep(0.2)
    assert cluster.node.lookups > before  # the kubelet is polling for more
    await chunks.aclose()
    await asyncio.sleep(0.2)  # let the cancellation reach the kubelet
    settled = cluster.node.lookups
    await asyncio.sleep(0.2)
    assert cluster.node.lookups == settled


async def test_exec_through_the_master(cluster: Cluster) -> None:
    await cluster.run_pod(make_pod("shell", "app"))
    env = {"FAKE_EXEC_STDOUT": "out\n", "FAKE_EXEC_STDERR": "err\n", "FAKE_EXEC_EXIT_CODE": "3"}
    await cluster.run_pod(make_pod("scripted", "app", **env))
    reply = await pod_exec(cluster.api, "shell", ["echo", "hi"])
    assert (reply.stdout, reply.exit_code) == ("hi\n", 0)
    reply = await pod_exec(cluster.api, "scripted", ["anything"], container="app")
    assert (reply.stdout, reply.stderr, reply.exit_code) == ("out\n", "err\n", 3)
    details = await expect_error(
        pod_exec(cluster.api, "shell", ["ls"], container="nope"), grpc.StatusCode.NOT_FOUND
    )
    assert details == 'container "nope" not found in pod "shell"'
    await expect_error(pod_exec(cluster.api, "missing", ["ls"]), grpc.StatusCode.NOT_FOUND)


# -- the CLI ---------------------------------------------------------------------


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


async def kubeling(cluster: Cluster, *args: str) -> Result:
    # Async, so the in-process master keeps serving while the CLI talks to it.
    proc = await asyncio.create_subprocess_exec(
        str(KUBELING),
        "--server",
        cluster.address,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def test_cli_logs(cluster: Cluster) -> None:
    await cluster.run_pod(make_pod("cli-web", "app", "sidecar"))
    node = cluster.node
    node.log("default", "cli-web", "app", cri_line("a"), cri_line("b"), cri_line("c"))
    result = await kubeling(cluster, "logs", "cli-web", "-c", "app")
    assert (result.code, result.stdout) == (0, "a\nb\nc\n"), result.stderr
    result = await kubeling(cluster, "logs", "pod/cli-web", "--container=app", "--tail", "2")
    assert result.stdout == "b\nc\n", result.stderr
    result = await kubeling(cluster, "logs", "po/cli-web", "-c", "app", "--since", "1h")
    assert result.stdout == "a\nb\nc\n", result.stderr
    result = await kubeling(cluster, "logs", "cli-web", "-c", "app", "--timestamps", "--tail=1")
    assert result.stdout.endswith("Z c\n"), result.stderr

    result = await kubeling(cluster, "logs", "cli-web")
    assert result.code == 1
    assert result.stderr.strip() == (
        "Error from server (BadRequest): a container name must be specified for pod cli-web, "
        "choose one of: [app sidecar]"
    )
    result = await kubeling(cluster, "logs", "nope", "-n", "default")
    assert result.code == 1
    assert result.stderr.strip() == (
        'Error from server (NotFound): pods "nope" in namespace "default" not found'
    )
    result = await kubeling(cluster, "logs", "cli-web", "-c", "app", "-p")
    assert result.code == 1 and "previous terminated container" in result.stderr
    result = await kubeling(cluster, "logs", "cli-web", "--since", "soon")
    assert result.code == 2 and "invalid duration" in result.stderr


async def test_cli_logs_of_a_pod_on_a_dead_node(cluster: Cluster) -> None:
    await cluster.run_pod(make_pod("cli-stranded", "app"), node_name="dead-node")
    result = await kubeling(cluster, "logs", "cli-stranded")
    assert result.code == 1
    assert result.stderr.startswith('Error from server: cannot reach the kubelet of node "dead')


async def test_cli_logs_follow_until_ctrl_c(cluster: Cluster) -> None:
    await cluster.run_pod(make_pod("cli-follow", "app"))
    node = cluster.node
    node.log("default", "cli-follow", "app", cri_line("first"))
    proc = await asyncio.create_subprocess_exec(
        str(KUBELING),
        "--server",
        cluster.address,
        "logs",
        "-f",
        "cli-follow",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"first\n"
        node.log("default", "cli-follow", "app", cri_line("second"))
        assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"second\n"
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 20)
    stderr = (await proc.stderr.read()).decode()
    assert code == 0, stderr
    assert "Traceback" not in stderr


async def test_cli_exec(cluster: Cluster) -> None:
    await cluster.run_pod(make_pod("cli-shell", "app"))
    env = {"FAKE_EXEC_STDOUT": "out\n", "FAKE_EXEC_STDERR": "err\n", "FAKE_EXEC_EXIT_CODE": "3"}
    await cluster.run_pod(make_pod("cli-scripted", "main", **env))

    result = await kubeling(cluster, "exec", "cli-shell", "--", "echo", "-n", "hello")
    assert (result.code, result.stdout, result.stderr) == (0, "-n hello\n", "")
    result = await kubeling(
        cluster, "exec", "cli-shell", "-c", "app", "-n", "default", "--", "false"
    )
    assert result.code == 1
    assert result.stderr == "command terminated with exit code 1\n"
    result = await kubeling(
        cluster, "exec", "-c", "main", "pod/cli-scripted", "--", "sh", "-c", "x"
    )
    assert (result.code, result.stdout) == (3, "out\n")
    assert result.stderr == "err\ncommand terminated with exit code 3\n"

    result = await kubeling(cluster, "exec", "cli-shell", "-c", "nope", "--", "ls")
    assert result.code == 1
    assert result.stderr.strip() == (
        'Error from server (NotFound): container "nope" not found in pod "cli-shell"'
    )
    result = await kubeling(cluster, "exec", "cli-shell")
    assert result.code == 1 and "at least one command" in result.stderr
