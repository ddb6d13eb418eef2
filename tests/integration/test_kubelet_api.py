"""The kubelet API (kubeling.v1.Kubelet) over real gRPC on loopback, backed by a
FakeRuntime and a small in-test PodDirectory whose containers write CRI log files."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeling.common import rpc
from kubeling.cri.api import pb
from kubeling.cri.fake import FakeRuntime
from kubeling.kubelet.directory import ContainerRef
from kubeling.kubelet.labels import CONTAINER_NAME as CONTAINER_NAME_LABEL
from kubeling.kubelet.labels import POD_NAME as POD_NAME_LABEL
from kubeling.kubelet.labels import POD_NAMESPACE as POD_NAMESPACE_LABEL
from kubeling.kubelet.server import SERVICE_NAME, serve_kubelet_api
from kubeling.v1 import core_pb2, kubelet_pb2

pytestmark = pytest.mark.asyncio(loop_scope="session")


def cri_line(
    text: str, stream: str = "stdout", tag: str = "F", at: dt.datetime | None = None
) -> str:
    when = (at or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{when} {stream} {tag} {text}\n"


def make_pod(name: str, *containers: str, namespace: str = "default", **env: str) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = namespace
    pod.metadata.uid = f"uid-{namespace}-{name}"
    for container in containers:
        pod.spec.containers.add(
            name=container,
            image="busybox",
            env=[core_pb2.EnvVar(name=k, value=v) for k, v in env.items()],
        )
    return pod


class FakeNode:
    """A PodDirectory over a FakeRuntime, as the kubelet core will provide one.

    Containers are started in the runtime with the labels a kubelet sets, and each
    instance gets its own CRI log file that tests append to with `log`.
    """

    def __init__(self, runtime: FakeRuntime, log_dir: Path, node_name: str = "node-1") -> None:
        self.runtime = runtime
        self.log_dir = log_dir
        self.node_name = node_name
        self._pods: dict[tuple[str, str], core_pb2.Pod] = {}
        self._sandboxes: dict[tuple[str, str], tuple[str, pb.PodSandboxConfig]] = {}
        # Every instance of a container, oldest first; the last one is current.
        self._instances: dict[tuple[str, str, str], list[ContainerRef]] = {}

    # -- PodDirectory ---------------------------------------------------------

    def pods(self) -> list[core_pb2.Pod]:
        return list(self._pods.values())

    def find_pod(self, namespace: str, name: str) -> core_pb2.Pod | None:
        return self._pods.get((namespace, name))

    def find_container(
        self, namespace: str, name: str, container: str, previous: bool = False
    ) -> ContainerRef | None:
        pod = self._pods.get((namespace, name))
        if pod is None:
            return None
        if not container and len(pod.spec.containers) == 1:
            container = pod.spec.containers[0].name
        instances = self._instances.get((namespace, name, container), [])
        wanted = -2 if previous else -1
        return instances[wanted] if len(instances) >= -wanted else None

    # -- test controls --------------------------------------------------------

    def add_pod(self, pod: core_pb2.Pod) -> None:
        """Known to the node but no container started yet."""
        self._pods[(pod.metadata.namespace, pod.metadata.name)] = pod

    async def run_pod(self, pod: core_pb2.Pod) -> None:
        self.add_pod(pod)
        ns, name, uid = pod.metadata.namespace, pod.metadata.name, pod.metadata.uid
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace=ns, uid=uid),
            log_directory=str(self.log_dir / f"{ns}_{name}_{uid}"),
            labels={POD_NAMESPACE_LABEL: ns, POD_NAME_LABEL: name},
        )
        sandbox_id = await self.runtime.run_pod_sandbox(config)
        self._sandboxes[(ns, name)] = (sandbox_id, config)
        for container in pod.spec.containers:
            await self.start_container(ns, name, container.name)

    async def start_container(self, namespace: str, name: str, container: str) -> ContainerRef:
        """Start (or restart) a container: a new instance with a new log file."""
        pod = self._pods[(namespace, name)]
        spec = next(c for c in pod.spec.containers if c.name == container)
        sandbox_id, sandbox = self._sandboxes[(namespace, name)]
        instances = self._instances.setdefault((namespace, name, container), [])
        attempt = len(instances)
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=container, attempt=attempt),
            image=pb.ImageSpec(image=spec.image),
            envs=[pb.KeyValue(key=e.name, value=e.value) for e in spec.env],
            labels={
                POD_NAMESPACE_LABEL: namespace,
                POD_NAME_LABEL: name,
                CONTAINER_NAME_LABEL: container,
            },
            log_path=f"{container}/{attempt}.log",
        )
        await self.runtime.pull_image(spec.image)
        container_id = await self.runtime.create_container(sandbox_id, config, sandbox)
        await self.runtime.start_container(container_id)
        log_path = Path(sandbox.log_directory) / container / f"{attempt}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()
        if instances:
            await self.stop_container(namespace, name, container)
        ref = ContainerRef(container_id, container, str(log_path), running=True)
        instances.append(ref)
        return ref

    async def stop_container(self, namespace: str, name: str, container: str) -> None:
        instances = self._instances[(namespace, name, container)]
        old = instances[-1]
        await self.runtime.stop_container(old.container_id, 0)
        instances[-1] = ContainerRef(old.container_id, old.name, old.log_path, running=False)

    def log(self, namespace: str, name: str, container: str, *lines: str) -> None:
        ref = self._instances[(namespace, name, container)][-1]
        with open(ref.log_path, "a") as f:
            f.write("".join(lines))


class KubeletStub:
    """Typed-enough callables for the kubelet API, built like the client builds them."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        base = f"/{SERVICE_NAME}/"
        ser = _serialize
        self.list_pods = channel.unary_unary(base + "ListPods", ser, core_pb2.PodList.FromString)
        self.logs = channel.unary_stream(base + "Logs", ser, core_pb2.LogChunk.FromString)
        self.exec = channel.unary_unary(base + "Exec", ser, core_pb2.ExecResponse.FromString)
        self.stats = channel.unary_unary(base + "Stats", ser, kubelet_pb2.StatsResponse.FromString)
        self.raw_exec = channel.unary_unary(base + "Exec", None, core_pb2.ExecResponse.FromString)

    async def read_logs(self, **fields: Any) -> str:
        return "".join([c.text async for c in self.logs(core_pb2.PodLogsRequest(**fields))])


def _serialize(message: Any) -> bytes:
    return bytes(message.SerializeToString())


@pytest.fixture
async def node(tmp_path: Path) -> FakeNode:
    return FakeNode(FakeRuntime(), tmp_path / "pods")


@pytest.fixture
async def kubelet(node: FakeNode) -> AsyncIterator[KubeletStub]:
    server = await serve_kubelet_api("127.0.0.1:0", node, node.runtime, poll_interval=0.02)
    channel = rpc.channel(f"127.0.0.1:{server.port}")
    try:
        yield KubeletStub(channel)
    finally:
        await channel.close()
        await server.stop(0)


async def expect_error(
    call: Any, code: grpc.StatusCode, message: str | None = None
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        result = await call if not hasattr(call, "__aiter__") else [c async for c in call]
        raise AssertionError(f"expected {code.name}, got {result!r}")
    assert info.value.code() == code, info.value.details()
    if message is not None:
        assert info.value.details() == message
    return info.value


# -- ListPods --------------------------------------------------------------------


async def test_list_pods(node: FakeNode, kubelet: KubeletStub) -> None:
    await node.run_pod(make_pod("web", "app"))
    await node.run_pod(make_pod("db", "pg", namespace="data"))
    result = await kubelet.list_pods(kubelet_pb2.KubeletListPodsRequest())
    assert sorted(p.metadata.name for p in result.items) == ["db", "web"]


# -- Logs ------------------------------------------------------------------------


async def test_logs_of_the_only_container(node: FakeNode, kubelet: KubeletStub) -> None:
    await node.run_pod(make_pod("web", "app"))
    node.log("default", "web", "app", cri_line("hello"), cri_line("wor", tag="P"), cri_line("ld"))
    node.log("default", "web", "app", cri_line("oops", stream="stderr"))
    assert await kubelet.read_logs(name="web") == "hello\nworld\noops\n"
    assert await kubelet.read_logs(name="web", namespace="default", tail_lines=1) == "oops\n"
    assert await kubelet.read_logs(name="web", container="app", tail_lines=0) == ""
    stamped = await kubelet.read_logs(name="web", timestamps=True, tail_lines=1)
    assert stamped.endswith("Z oops\n") and stamped[:4].isdigit()


async def test_logs_since(node: FakeNode, kubelet: KubeletStub) -> None:
    await node.run_pod(make_pod("web", "app"))
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    node.log("default", "web", "app", cri_line("old", at=old), cri_line("new"))
    assert await kubelet.read_logs(name="web", since_seconds=60) == "new\n"
    assert await kubelet.read_logs(name="web", since_seconds=7200) == "old\nnew\n"


async def test_logs_errors_read_like_kubectl(node: FakeNode, kubelet: KubeletStub) -> None:
    await node.run_pod(make_pod("web", "a", "b"))
    await node.run_pod(make_pod("single", "app"))
    logs = kubelet.logs
    await expect_error(
        logs(core_pb2.PodLogsRequest(name="nope")),
        grpc.StatusCode.NOT_FOUND,
        'pods "nope" not found',
    )
    await expect_error(
        logs(core_pb2.PodLogsRequest(name="web", container="x")),
        grpc.StatusCode.NOT_FOUND,
        'container "x" not found in pod "web"',
    )
    await expect_error(
        logs(core_pb2.PodLogsRequest(name="web")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "a container name must be specified for pod web, choose one of: [a b]",
    )
    await expect_error(
        logs(core_pb2.PodLogsRequest(name="single", previous=True)),
        grpc.StatusCode.NOT_FOUND,
        'previous terminated container "app" in pod "single" not found',
    )
    await expect_error(
        logs(core_pb2.PodLogsRequest(name="single", tail_lines=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    # Wrong namespace: the pod is not there.
    await expect_error(
        logs(core_pb2.PodLogsRequest(name="web", namespace="other", container="a")),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_logs_of_a_container_not_started_yet(node: FakeNode, kubelet: KubeletStub) -> None:
    pod = make_pod("pending", "app")
    pod.status.container_statuses.add(name="app").state.waiting.reason = "ContainerCreating"
    node.add_pod(pod)
    await expect_error(
        kubelet.logs(core_pb2.PodLogsRequest(name="pending")),
        grpc.StatusCode.FAILED_PRECONDITION,
        'container "app" in pod "pending" is waiting to start: ContainerCreating',
    )


async def test_logs_of_the_previous_instance(node: FakeNode, kubelet: KubeletStub) -> None:
    await node.run_pod(make_pod("web", "app"))
    node.log("default", "web", "app", cri_line("first life"))
    await node.start_container("default", "web", "app")
    node.log("default", "web", "app", cri_line("second life"))
    assert await kubelet.read_logs(name="web") == "second life\n"
    assert await kubelet.read_logs(name="web", previous=True) == "first life\n"
    # Following a terminated instance just prints it.
    assert await kubelet.read_logs(name="web", previous=True, follow=True) == "first life\n"


async def test_follow_streams_until_the_container_stops(
    node: FakeNode, kubelet: KubeletStub
) -> None:
    await node.run_pod(make_pod("web", "app"))
    node.log("default", "web", "app", cri_line("one"))
    call = kubelet.logs(core_pb2.PodLogsRequest(name="web", follow=True))
    seen = ""
    async with asyncio.timeout(10):
        async for chunk in call:
            seen += chunk.text
            if seen == "one\n":
                node.log("default", "web", "app", cri_line("two"))
            elif seen == "one\ntwo\n":
                node.log("default", "web", "app", cri_line("last"))
                await node.stop_container("default", "web", "app")
    # The stream ended by itself once the container stopped and the file was drained.
    assert seen == "one\ntwo\nlast\n"
    assert await call.code() == grpc.StatusCode.OK


async def test_follow_ends_when_the_caller_cancels(node: FakeNode, kubelet: KubeletStub) -> None:
    await node.run_pod(make_pod("web", "app"))
    node.log("default", "web", "app", cri_line("one"))
    call = kubelet.logs(core_pb2.PodLogsRequest(name="web", follow=True))
    first = await call.read()
    assert first.text == "one\n"
    call.cancel()
    assert await call.code() == grpc.StatusCode.CANCELLED
    # The server is still fine.
    assert await kubelet.read_logs(name="web", tail_lines=1) == "one\n"


# -- Exec ------------------------------------------------------------------------


async def test_exec(node: FakeNode, kubelet: KubeletStub) -> None:
    await node.run_pod(make_pod("web", "app"))
    reply = await kubelet.exec(core_pb2.PodExecRequest(name="web", command=["echo", "hi", "there"]))
    assert (reply.stdout, reply.stderr, reply.exit_code) == ("hi there\n", "", 0)
    failed = await kubelet.exec(core_pb2.PodExecRequest(name="web", command=["false"]))
    assert failed.exit_code == 1


async def test_exec_output_and_exit_code(node: FakeNode, kubelet: KubeletStub) -> None:
    env = {"FAKE_EXEC_STDOUT": "out", "FAKE_EXEC_STDERR": "err", "FAKE_EXEC_EXIT_CODE": "3"}
    await node.run_pod(make_pod("web", "app", **env))
    reply = await kubelet.exec(core_pb2.PodExecRequest(name="web", container="app", command=["x"]))
    assert (reply.stdout, reply.stderr, reply.exit_code) == ("out", "err", 3)


async def test_exec_errors(node: FakeNode, kubelet: KubeletStub) -> None:
    await node.run_pod(make_pod("web", "app"))
    await node.run_pod(make_pod("two", "a", "b"))
    await node.run_pod(make_pod("slow", "app", FAKE_EXEC_DELAY="5s"))
    exec_ = kubelet.exec
    await expect_error(
        exec_(core_pb2.PodExecRequest(name="nope", command=["ls"])),
        grpc.StatusCode.NOT_FOUND,
        'pods "nope" not found',
    )
    await expect_error(
        exec_(core_pb2.PodExecRequest(name="two", command=["ls"])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "a container name must be specified for pod two, choose one of: [a b]",
    )
    await expect_error(
        exec_(core_pb2.PodExecRequest(name="web", command=[])), grpc.StatusCode.INVALID_ARGUMENT
    )
    await expect_error(
        exec_(core_pb2.PodExecRequest(name="slow", command=["ls"], timeout_seconds=1)),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "command timed out after 1s",
    )
    await node.stop_container("default", "web", "app")
    error = await expect_error(
        exec_(core_pb2.PodExecRequest(name="web", command=["ls"])),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "container is not running" in (error.details() or "")


async def test_exec_in_a_container_that_just_died(node: FakeNode, kubelet: KubeletStub) -> None:
    await node.run_pod(make_pod("web", "app"))
    ref = node.find_container("default", "web", "app")
    assert ref is not None
    # The runtime knows before the directory does.
    node.runtime.exit_container(ref.container_id, 1)
    error = await expect_error(
        kubelet.exec(core_pb2.PodExecRequest(name="web", command=["ls"])),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "container is not running" in (error.details() or "")


async def test_malformed_request(kubelet: KubeletStub) -> None:
    await expect_error(kubelet.raw_exec(b"\xff\xff\xff"), grpc.StatusCode.INVALID_ARGUMENT)


# -- Stats -----------------------------------------------------------------------


async def test_stats(node: FakeNode, kubelet: KubeletStub) -> None:
    await node.run_pod(make_pod("web", "a", "b", FAKE_MEMORY="64Mi"))
    await node.run_pod(make_pod("db", "pg", namespace="data"))
    await node.run_pod(make_pod("gone", "app"))
    del node._pods[("default", "gone")]  # deleted from the node, container left over
    await node.stop_container("default", "web", "b")

    everything = await kubelet.stats(kubelet_pb2.StatsRequest())
    assert everything.node_name == "node-1"
    found = [(e.namespace, e.pod, e.container) for e in everything.containers]
    assert found == [("data", "db", "pg"), ("default", "web", "a")]
    web_a = everything.containers[1]
    assert web_a.memory_working_set_bytes == 64 * 1024 * 1024
    assert web_a.container_id == node.find_container("default", "web", "a").container_id  # type: ignore[union-attr]
    assert web_a.timestamp.seconds > 0

    data = await kubelet.stats(kubelet_pb2.StatsRequest(namespace="data"))
    assert [e.pod for e in data.containers] == ["db"]
    web = await kubelet.stats(kubelet_pb2.StatsRequest(namespace="default", name="web"))
    assert [e.container for e in web.containers] == ["a"]
    none = await kubelet.stats(kubelet_pb2.StatsRequest(namespace="default", name="db"))
    assert list(none.containers) == []
