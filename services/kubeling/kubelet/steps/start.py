"""Starting a container's next instance (shared by the init and app container steps).

Reads the container's last instance, the crash-loop and image back-offs. Waits out
a crash loop's back-off (CrashLoopBackOff) or an image back-off (ImagePullBackOff);
otherwise gets the image (without a start slot), then creates and starts the
container holding a start slot. Returns when to try again (None: on the next
change); the container's waiting reason and the pod's events say why. A
container whose environment or mounts cannot be made (a missing ConfigMap, Secret
or key) waits with CreateContainerConfigError and is retried.
"""

from __future__ import annotations

import time

from kubeling.cri.errors import CRIError
from kubeling.kubelet.containers import (
    ContainerConfigError,
    container_config,
    resolve_environment,
)
from kubeling.kubelet.runtime_state import ContainerInstance
from kubeling.kubelet.status import Waiting
from kubeling.kubelet.steps.base import CREATE_RETRY, NodeServices, PodContext
from kubeling.kubelet.steps.images import ensure_image
from kubeling.kubelet.volumes import VolumeError, container_mounts
from kubeling.v1 import core_pb2


def backoff_key(uid: str, container: str) -> str:
    return f"{uid}/{container}"


def image_backoff_key(uid: str, container: str) -> str:
    return f"{uid}/{container}/image"


async def start_container(
    node: NodeServices,
    ctx: PodContext,
    spec: core_pb2.Container,
    latest: ContainerInstance | None,
    *,
    init: bool,
    replacing: bool = False,
) -> float | None:
    """Start `spec`'s next instance after `latest` unless it is backing off.
    `replacing`: `latest` was stopped by this sync (its definition changed), so the
    new one starts at once, without a crash-loop back-off."""
    pod = ctx.spec
    waiting = ctx.waiting
    assert ctx.sandbox is not None, "the sandbox step runs first"
    key = backoff_key(ctx.uid, spec.name)
    if latest is not None and latest.exited and not replacing:
        ran_for = max(0.0, (latest.finished_at - latest.started_at) / 1e9)
        finished = latest.finished_at / 1e9
        remaining = node.backoff.remaining_after_exit(key, finished, ran_for)
        if remaining > 0:
            waiting[spec.name] = Waiting(
                "CrashLoopBackOff",
                f"back-off {node.backoff.current(key):.0f}s restarting failed "
                f"container={spec.name} pod={pod.metadata.name}_{pod.metadata.namespace}",
            )
            node.recorder.record(pod, "Warning", "BackOff", "Back-off restarting failed container")
            return remaining
    attempt = latest.attempt + 1 if latest is not None else 0
    image_key = image_backoff_key(ctx.uid, spec.name)
    if node.image_backoff.remaining(image_key) > 0:
        before = waiting.get(spec.name)
        if before is None or before.reason != "ErrImageNeverPull":
            waiting[spec.name] = Waiting(
                "ImagePullBackOff", f'Back-off pulling image "{spec.image}"'
            )
        return node.image_backoff.remaining(image_key)
    image_ref = await ensure_image(node, ctx, spec, ctx.sandbox)
    node.mark(ctx.uid, "images")
    if image_ref is None:
        node.image_backoff.step(image_key)
        return node.image_backoff.remaining(image_key)
    node.image_backoff.forget(image_key)
    try:
        env, warnings = await resolve_environment(node.objects, pod, spec, ctx.pod_ip, node.host_ip)
        hosts = None
        if node.volumes is not None and ctx.pod_ip and not pod.spec.host_network:
            hosts = await node.volumes.write_hosts(pod, ctx.pod_ip, node.dns.cluster_domain)
        mounts = container_mounts(pod, spec, ctx.volume_paths, hosts)
        config = container_config(
            pod, spec, attempt, image_ref, ctx.pod_ip, node.host_ip, init, env=env, mounts=mounts
        )
    except (ContainerConfigError, VolumeError) as exc:
        # As the kubelet: not started, retried on later syncs until it can be.
        waiting[spec.name] = Waiting("CreateContainerConfigError", str(exc))
        node.recorder.record(pod, "Warning", "Failed", f"Error: {exc}")
        return CREATE_RETRY
    for warning in warnings:
        node.recorder.record(pod, "Warning", "InvalidEnvironmentVariableNames", warning)
    await ctx.lease.acquire(resume=True)
    try:
        container_id = await node.runtime.create_container(ctx.sandbox_id, config, ctx.sandbox)
    except CRIError as exc:
        waiting[spec.name] = Waiting("CreateContainerError", exc.details)
        node.recorder.record(pod, "Warning", "Failed", f"Error: {exc.details}")
        return CREATE_RETRY
    node.recorder.record(pod, "Normal", "Created", f"Created container {spec.name}")
    try:
        await node.runtime.start_container(container_id)
    except CRIError as exc:
        waiting[spec.name] = Waiting("RunContainerError", exc.details)
        node.recorder.record(pod, "Warning", "Failed", f"Error: {exc.details}")
        node.backoff.step(key)
        return node.backoff.current(key)
    if latest is not None and not replacing:
        node.backoff.step(key)
    node.backoff.note_start(key, time.time())
    node.mark(ctx.uid, "started")
    waiting.pop(spec.name, None)
    node.recorder.record(pod, "Normal", "Started", f"Started container {spec.name}")
    return None
