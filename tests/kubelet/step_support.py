"""Helpers for the pod sync steps' unit tests (tests/unit/test_kubelet_step_*.py):
node services over the fake CRI runtime, pods, and a sync context at any step."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from kubeling.cri.fake import FakeRuntime
from kubeling.kubelet.backoff import Backoff
from kubeling.kubelet.runtime_state import Relister, RuntimePod
from kubeling.kubelet.steps import NodeServices, PodContext, StartSlots, grace_period
from kubeling.kubelet.steps.sandbox import EnsureSandbox
from kubeling.v1 import core_pb2

BUSYBOX = "docker.io/library/busybox:latest"


class Events:
    """A recorder that keeps what it was told."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str, str]] = []

    def record(self, obj: object, type_: str, reason: str, message: str) -> None:
        self.items.append((type_, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.items]


class Probes:
    """Liveness verdicts set by the test: (pod uid, container name) that failed."""

    def __init__(self) -> None:
        self.failed: set[tuple[str, str]] = set()

    def liveness_failed(self, pod_uid: str, container: str, container_id: str = "") -> bool:
        return (pod_uid, container) in self.failed


def node_services(
    tmp_path: Path, runtime: FakeRuntime | None = None, parallel_starts: int = 4
) -> NodeServices:
    return NodeServices(
        runtime=runtime or FakeRuntime(images=[BUSYBOX]),
        log_root=tmp_path / "pods",
        host_ip="127.0.0.1",
        backoff=Backoff(0.5, 2.0, 60.0, clock=time.time),
        image_backoff=Backoff(0.5, 2.0, 60.0, clock=time.time),
        recorder=Events(),
        probes=Probes(),
        slots=StartSlots(parallel_starts),
    )


def events(node: NodeServices) -> Events:
    assert isinstance(node.recorder, Events)
    return node.recorder


def probes(node: NodeServices) -> Probes:
    assert isinstance(node.probes, Probes)
    return node.probes


def fake(node: NodeServices) -> FakeRuntime:
    assert isinstance(node.runtime, FakeRuntime)
    return node.runtime


def make_pod(
    name: str = "web",
    *containers: dict[str, Any],
    init: tuple[dict[str, Any], ...] = (),
    **spec: Any,
) -> core_pb2.Pod:
    """A pod; each container is {"name", "image"?, "env"?, "policy"?} (default: one
    container "main" that runs until stopped)."""
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = "default"
    pod.metadata.uid = str(uuid.uuid4())
    pod.spec.node_name = "node"
    pod.spec.termination_grace_period_seconds = 1
    for c in init:
        _add_container(pod.spec.init_containers, c)
    for c in containers or ({"name": "main"},):
        _add_container(pod.spec.containers, c)
    for key, value in spec.items():
        setattr(pod.spec, key, value)
    return pod


def _add_container(into: Any, c: dict[str, Any]) -> None:
    container = into.add(name=c["name"], image=c.get("image", "busybox"))
    for key, value in c.get("env", {}).items():
        container.env.add(name=key, value=value)
    container.image_pull_policy = c.get("policy", "")


async def snapshot(node: NodeServices, uid: str) -> RuntimePod | None:
    """What the runtime holds for the pod now (a relist)."""
    return (await Relister(node.runtime).relist(uid)).get(uid)


async def context(node: NodeServices, pod: core_pb2.Pod, *, sandbox: bool = False) -> PodContext:
    """A fresh sync's context for `pod`; `sandbox`: after the sandbox step ran."""
    uid = pod.metadata.uid
    ctx = PodContext(
        uid,
        pod,
        await snapshot(node, uid),
        grace_period(pod),
        node.slots.lease(),
        node.waiting.setdefault(uid, {}),
    )
    if sandbox:
        assert await EnsureSandbox(node).run(ctx) is None
        ctx.lease.release()
    return ctx
