"""The kubelet against a real containerd (started here) and a real master process.

Pods are real containers from the busybox image the project builds. The kubelet
runs in this process and speaks CRI to containerd over its unix socket; containerd
and every pod live in a network namespace made for the test (no route anywhere).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from kubeling.client import Client
from kubeling.client.pods import pod_exec, pod_logs
from kubeling.cri.api import pb
from kubeling.cri.client import RuntimeClient
from kubeling.kubelet import labels
from kubeling.kubelet.kubelet import Kubelet, KubeletConfig
from kubeling.v1 import core_pb2
from tests.kubelet.test_kubelet_fake import phase_of
from tests.support.containerd import PrivateContainerd
from tests.support.processes import MasterProcess, stop_process
from tests.support.real_kubelet import kubelet_config, remove_node_pods
from tests.support.waiting import eventually_passes

pytestmark = pytest.mark.slow  # asyncio tests run on the session loop (pyproject)

NODE = "node-real"


def config(master: MasterProcess, node: PrivateContainerd) -> KubeletConfig:
    return kubelet_config(master.address, NODE, node)


class RealNode:
    def __init__(self, master: MasterProcess, node: PrivateContainerd, api: Client) -> None:
        self.master, self.containerd, self.api = master, node, api
        self.runtime = RuntimeClient(node.endpoint)
        self.kubelet = Kubelet(config(master, node), self.runtime, api)

    async def restart_kubelet(self) -> None:
        await self.kubelet.stop()
        self.kubelet = Kubelet(config(self.master, self.containerd), self.runtime, self.api)
        await self.kubelet.start()


@pytest.fixture
async def node(
    master: MasterProcess, containerd: PrivateContainerd, api: Client
) -> AsyncIterator[RealNode]:
    real = RealNode(master, containerd, api)
    await real.kubelet.start()
    try:
        yield real
    finally:
        await remove_node_pods(api, NODE)
        await real.kubelet.stop()
        await real.runtime.close()


def pod(name: str, *containers: core_pb2.Container, **spec: object) -> core_pb2.Pod:
    obj = core_pb2.Pod()
    obj.metadata.name = name
    obj.metadata.namespace = "default"
    obj.spec.node_name = NODE
    obj.spec.termination_grace_period_seconds = 2
    obj.spec.containers.extend(containers)
    for key, value in spec.items():
        setattr(obj.spec, key, value)
    return obj


def sh(name: str, script: str, **fields: object) -> core_pb2.Container:
    container = core_pb2.Container(name=name, image="busybox", command=["sh", "-c", script])
    for key, value in fields.items():
        getattr(container, key).CopyFrom(value)
    return container


def exec_probe(*command: str, period: int = 1, failures: int = 1) -> core_pb2.Probe:
    probe = core_pb2.Probe(period_seconds=period, timeout_seconds=2, failure_threshold=failures)
    probe.exec.command.extend(command)
    return probe


async def test_containers_of_a_pod_share_localhost_and_logs_exec_work(node: RealNode) -> None:
    web = sh(
        "web",
        "mkdir -p /www && echo hello-from-web > /www/index.html && httpd -f -p 8080 -h /www",
    )
    client = sh(
        "client",
        "until wget -q -O- http://127.0.0.1:8080/; do sleep 0.2; done; exec sleep 3600",
    )
    await node.api.pods.create(pod("pair", web, client))
    running = await eventually_passes(lambda: phase_of(node.api, "pair", "Running"), 60)
    assert running.status.pod_ip.startswith("10.244.7.")

    async def client_logged() -> bool:
        chunks = [c async for c in pod_logs(node.api, "pair", container="client")]
        return "hello-from-web" in "".join(chunks)

    await eventually_passes(client_logged, 30)
    reply = await pod_exec(
        node.api, "pair", ["wget", "-q", "-O-", "http://localhost:8080/"], container="client"
    )
    assert (reply.exit_code, reply.stdout.strip()) == (0, "hello-from-web")
    failed = await pod_exec(
        node.api, "pair", ["sh", "-c", "echo oops >&2; exit 7"], "default", "web"
    )
    assert (failed.exit_code, failed.stderr.strip()) == (7, "oops")


async def test_exit_codes_restart_counts_and_back_off(node: RealNode) -> None:
    await node.api.pods.create(pod("exits", sh("main", "exit 3"), restart_policy="Never"))
    await node.api.pods.create(pod("crashes", sh("main", "echo crashing; exit 1")))
    failed = await eventually_passes(lambda: phase_of(node.api, "exits", "Failed"), 60)
    terminated = failed.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")

    async def backing_off() -> bool:
        got = await node.api.pods.get("crashes", "default")
        status = got.status.container_statuses[0]
        return (
            status.restart_count >= 2
            and status.state.waiting.reason == "CrashLoopBackOff"
            and status.last_state.terminated.exit_code == 1
        )

    await eventually_passes(backing_off, 60)
    logs = "".join([c async for c in pod_logs(node.api, "crashes", previous=True)])
    assert "crashing" in logs


async def test_failing_liveness_probe_restarts_the_container(node: RealNode) -> None:
    script = "touch /tmp/healthy; sleep 2; rm /tmp/healthy; exec sleep 3600"
    main = sh("main", script, liveness_probe=exec_probe("cat", "/tmp/healthy"))
    await node.api.pods.create(pod("liveness", main))

    async def restarted() -> bool:
        got = await node.api.pods.get("liveness", "default")
        return got.status.container_statuses[0].restart_count >= 1

    await eventually_passes(restarted, 60)
    events = await node.api.events.list("default", field_selector="involvedObject.name=liveness")
    assert any("liveness" in e.message for e in events.items)


async def test_readiness_probe_flips_ready(node: RealNode) -> None:
    main = sh(
        "main", "sleep 2; touch /tmp/ready; exec sleep 3600",
        readiness_probe=exec_probe("cat", "/tmp/ready"),
    )  # fmt: skip
    await node.api.pods.create(pod("readiness", main))

    async def ready_is(value: str) -> bool:
        got = await node.api.pods.get("readiness", "default")
        return {c.type: c.status for c in got.status.conditions}.get("Ready") == value

    await eventually_passes(lambda: phase_of(node.api, "readiness", "Running"), 60)
    assert await ready_is("False")
    await eventually_passes(lambda: ready_is("True"), 30)
    await pod_exec(node.api, "readiness", ["rm", "/tmp/ready"])
    await eventually_passes(lambda: ready_is("False"), 30)


async def test_memory_limit_exceeded_is_oom_killed(node: RealNode) -> None:
    hog = sh("hog", "dd if=/dev/zero of=/dev/null bs=96M count=1")
    hog.resources.limits["memory"] = "32Mi"
    await node.api.pods.create(pod("oom", hog, restart_policy="Never"))
    failed = await eventually_passes(lambda: phase_of(node.api, "oom", "Failed"), 60)
    terminated = failed.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "OOMKilled")


async def test_graceful_stop_sends_term_and_waits(node: RealNode) -> None:
    handles = sh("main", "trap 'sleep 2; exit 0' TERM; while true; do sleep 0.2; done")
    ignores = sh("main", "trap '' TERM; while true; do sleep 0.2; done")
    await node.api.pods.create(pod("handles-term", handles, termination_grace_period_seconds=20))
    await node.api.pods.create(pod("ignores-term", ignores, termination_grace_period_seconds=2))
    for name in ("handles-term", "ignores-term"):
        await eventually_passes(lambda name=name: phase_of(node.api, name, "Running"), 60)

    async def removal_time(name: str) -> float:
        started = time.monotonic()
        await node.api.pods.delete(name, "default")

        async def gone() -> bool:
            try:
                await node.api.pods.get(name, "default")
            except grpc.aio.AioRpcError as exc:
                return exc.code() == grpc.StatusCode.NOT_FOUND
            return False

        await eventually_passes(gone, 60)
        return time.monotonic() - started

    handled, ignored = await asyncio.gather(
        removal_time("handles-term"), removal_time("ignores-term")
    )
    # TERM ran the handler (about 2 s) and the kubelet waited for it, well inside
    # the 20 s grace; the pod that ignores TERM was killed when its 2 s ran out.
    assert 1.8 <= handled < 12, handled
    assert 1.8 <= ignored < 12, ignored


async def test_a_force_delete_cuts_a_graceful_stop_short(node: RealNode) -> None:
    """A pod ignoring TERM with 30 s to stop, then deleted again with grace 0: the
    kubelet interrupts the stop in flight and kills it at once."""
    ignores = sh("main", "trap '' TERM; while true; do sleep 0.2; done")
    await node.api.pods.create(pod("stubborn", ignores, termination_grace_period_seconds=30))
    await eventually_passes(lambda: phase_of(node.api, "stubborn", "Running"), 60)
    await node.api.pods.delete("stubborn", "default", grace_period_seconds=30)

    async def stopping() -> bool:
        events = await node.api.events.list(
            "default", field_selector="involvedObject.name=stubborn"
        )
        return "Killing" in {e.reason for e in events.items}

    await eventually_passes(stopping, 30)
    mine = {labels.POD_NAME: "stubborn"}
    (running,) = await node.runtime.list_containers(labels=mine)
    assert running.state == pb.CONTAINER_RUNNING  # TERM ignored: it runs on

    started = time.monotonic()
    await node.api.pods.delete("stubborn", "default", grace_period_seconds=0)

    async def removed() -> bool:
        return not await node.runtime.list_pod_sandbox(labels=mine)

    await eventually_passes(removed, 30)
    elapsed = time.monotonic() - started
    assert elapsed < 3.0, elapsed


async def test_kubelet_restart_keeps_pods_running(node: RealNode) -> None:
    await node.api.pods.create(pod("steady-a", sh("main", "exec sleep 3600")))
    await node.api.pods.create(pod("steady-b", sh("main", "exec sleep 3600")))
    before = {}
    for name in ("steady-a", "steady-b"):
        got = await eventually_passes(lambda name=name: phase_of(node.api, name, "Running"), 60)
        before[name] = got.status.container_statuses[0].container_id
    sandboxes = len(await node.runtime.list_pod_sandbox())
    await node.restart_kubelet()
    await asyncio.sleep(3)
    for name, container_id in before.items():
        got = await node.api.pods.get(name, "default")
        status = got.status.container_statuses[0]
        assert (status.container_id, status.restart_count) == (container_id, 0)
    assert len(await node.runtime.list_pod_sandbox()) == sandboxes


def test_kubelet_process_registers_and_shows_its_name(
    master: MasterProcess, containerd: PrivateContainerd, tmp_path: Path
) -> None:
    """`kubeling-kubelet` as users start it: its own process, named in `ps`."""
    import subprocess
    import sys

    binary = Path(sys.executable).parent / "kubeling-kubelet"
    log = (tmp_path / "kubelet.log").open("wb")
    process = subprocess.Popen(
        [
            str(binary), "--master", master.address, "--node-name", "node-process", "--insecure",
            "--runtime-endpoint", containerd.endpoint, "--listen", "127.0.0.1:0",
            "--node-ip", "127.0.0.1", "--pod-log-dir", str(tmp_path / "pods"),
            "--healthz-bind-address", "127.0.0.1:0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            out = subprocess.run(
                [str(Path(sys.executable).parent / "kubeling"), "--server", master.address,
                 "get", "node", "node-process", "-o", "name"],
                capture_output=True, text=True,
            )  # fmt: skip
            if out.returncode == 0:
                break
            assert process.poll() is None, (tmp_path / "kubelet.log").read_text()
            assert time.monotonic() < deadline, "node did not register"
            time.sleep(0.2)
        args = subprocess.run(
            ["ps", "-o", "args=", "-p", str(process.pid)], capture_output=True, text=True
        ).stdout
        assert args.startswith("kubeling-kubelet --master"), args
    finally:
        stop_process(process)
        log.close()
