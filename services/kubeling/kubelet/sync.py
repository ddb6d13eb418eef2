"""Drive one pod to its desired state in the runtime (upstream's SyncPod).

`PodSyncer.sync` is called by the pod's worker with the latest spec (or None once
the pod is gone from the master) and a fresh view of the runtime. It does the next
steps — sandbox, image pulls, init containers in order, app containers, restarts
with back-off, kills — and returns when it wants to be called again.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from kubeling.cri.api import pb
from kubeling.cri.errors import CRIError
from kubeling.cri.runtime import Runtime
from kubeling.kubelet.backoff import Backoff
from kubeling.kubelet.containers import container_config, container_hash, sandbox_config
from kubeling.kubelet.runtime_state import ContainerInstance, RuntimePod
from kubeling.kubelet.status import TERMINAL_PHASES, Waiting
from kubeling.v1 import core_pb2

log = structlog.get_logger(__name__)

_SANDBOX_RETRY = 2.0


class Recorder(Protocol):
    def record(self, obj: object, type_: str, reason: str, message: str) -> None: ...


class ProbeView(Protocol):
    def liveness_failed(self, pod_uid: str, container: str, container_id: str = "") -> bool: ...


@dataclass
class SyncResult:
    """What the worker should do next."""

    retry_after: float | None = None  # seconds; None: wait for the next change
    done: bool = False  # the pod is gone and cleaned up: the worker may stop


@dataclass
class PodSyncer:
    runtime: Runtime
    log_root: Path
    host_ip: str
    backoff: Backoff
    image_backoff: Backoff
    recorder: Recorder
    probes: ProbeView
    # Why each container is not running, per pod uid (read by the status code).
    waiting: dict[str, dict[str, Waiting]] = field(default_factory=dict)
    # When each pod first reached each start-up step (time.monotonic), for the
    # pod start-up benchmark and metrics: first_sync, sandbox, images, started.
    milestones: dict[str, dict[str, float]] = field(default_factory=dict)
    # Pod start-ups the runtime works on at once. containerd on a small machine is
    # CPU-bound: fifty sandboxes at once all finish late; a few at a time finish
    # in order, so most pods run much sooner.
    parallel_starts: int = 4
    _start_slots: asyncio.Semaphore | None = None

    def _slots(self) -> asyncio.Semaphore:
        if self._start_slots is None:
            self._start_slots = asyncio.Semaphore(self.parallel_starts)
        return self._start_slots

    def mark(self, uid: str, step: str) -> None:
        self.milestones.setdefault(uid, {}).setdefault(step, time.monotonic())

    # ---------------------------------------------------------------- entry

    async def sync(self, pod: core_pb2.Pod | None, current: RuntimePod | None) -> SyncResult:
        if pod is None or pod.metadata.HasField("deletion_timestamp"):
            grace = _grace(pod)
            await self.kill_pod(pod, current, grace)
            return SyncResult(done=True)
        if pod.status.phase in TERMINAL_PHASES:
            # Finished: stop what runs, release the network, keep containers for logs.
            await self._stop_running(pod, current, _grace(pod))
            await self._stop_sandboxes(current)
            return SyncResult()
        return await self._sync_live(pod, current)

    # ---------------------------------------------------------------- killing

    async def kill_pod(
        self, pod: core_pb2.Pod | None, current: RuntimePod | None, grace: int
    ) -> None:
        if current is not None:
            await self._stop_running(pod, current, grace)
            for sandbox in current.sandboxes:
                await self._remove_sandbox(sandbox.id)
        if pod is not None:
            self.waiting.pop(pod.metadata.uid, None)
            self.milestones.pop(pod.metadata.uid, None)
            self.backoff.forget_prefix(f"{pod.metadata.uid}/")

    async def _stop_running(
        self, pod: core_pb2.Pod | None, current: RuntimePod | None, grace: int
    ) -> None:
        if current is None:
            return
        running = [c for c in current.containers if c.running or c.created]
        if pod is not None:
            for container in running:
                self.recorder.record(
                    pod, "Normal", "Killing", f"Stopping container {container.name}"
                )
        await asyncio.gather(*(self._stop_container(c.id, grace) for c in running))

    async def _stop_container(self, container_id: str, grace: int) -> None:
        try:
            await self.runtime.stop_container(container_id, grace)
        except CRIError as exc:
            if not exc.not_found:
                raise

    async def _stop_sandboxes(self, current: RuntimePod | None) -> None:
        for sandbox in current.sandboxes if current else []:
            if sandbox.ready:
                try:
                    await self.runtime.stop_pod_sandbox(sandbox.id)
                except CRIError as exc:
                    if not exc.not_found:
                        raise

    async def _remove_sandbox(self, sandbox_id: str) -> None:
        # Stop first: RemovePodSandbox refuses a sandbox that is not fully stopped.
        for step in (self.runtime.stop_pod_sandbox, self.runtime.remove_pod_sandbox):
            try:
                await step(sandbox_id)
            except CRIError as exc:
                if not exc.not_found:
                    raise

    # ---------------------------------------------------------------- running

    async def _sync_live(self, pod: core_pb2.Pod, current: RuntimePod | None) -> SyncResult:
        self.mark(pod.metadata.uid, "first_sync")
        async with self._slots():
            return await self._sync_live_steps(pod, current)

    async def _sync_live_steps(self, pod: core_pb2.Pod, current: RuntimePod | None) -> SyncResult:
        uid = pod.metadata.uid
        waiting = self.waiting.setdefault(uid, {})
        sandbox = current.sandbox if current else None
        if sandbox is None or not sandbox.ready:
            if current is not None and sandbox is not None and _all_done(pod, current, sandbox.id):
                return SyncResult()  # nothing left to run: do not start a new sandbox
            created = await self._new_sandbox(pod, current, waiting)
            if created is None:
                return SyncResult(retry_after=_SANDBOX_RETRY)
            sandbox_id, pod_ip = created
            self.mark(uid, "sandbox")
            current = RuntimePod(uid, pod.metadata.namespace, pod.metadata.name)
        else:
            assert current is not None
            sandbox_id, pod_ip = sandbox.id, sandbox.ip
        config = sandbox_config(pod, self.log_root, 0)

        # Init containers, one at a time, each to successful completion.
        for spec in pod.spec.init_containers:
            latest = current.latest(spec.name, sandbox_id)
            if latest is not None and latest.exited and latest.exit_code == 0:
                waiting.pop(spec.name, None)
                continue
            if latest is not None and latest.running:
                return SyncResult()
            if latest is not None and latest.exited and pod.spec.restart_policy == "Never":
                return SyncResult()  # the pod has failed
            retry = await self._start_or_back_off(
                pod, spec, latest, sandbox_id, pod_ip, config, waiting, init=True
            )
            return SyncResult(retry_after=retry)

        retry_after: float | None = None
        for spec in pod.spec.containers:
            latest = current.latest(spec.name, sandbox_id)
            if latest is not None and latest.running:
                if latest.hash and latest.hash != container_hash(spec):
                    self.recorder.record(
                        pod,
                        "Normal",
                        "Killing",
                        f"Container {spec.name} definition changed, will be restarted",
                    )
                    await self._stop_container(latest.id, _grace(pod))
                    latest = None  # start the new definition right away
                elif self.probes.liveness_failed(uid, spec.name, latest.id):
                    self.recorder.record(
                        pod,
                        "Normal",
                        "Killing",
                        f"Container {spec.name} failed liveness probe, will be restarted",
                    )
                    await self._stop_container(latest.id, _grace(pod))
                    return SyncResult(retry_after=0.0)
                else:
                    waiting.pop(spec.name, None)
                    continue
            if latest is not None and latest.exited and not _should_restart(pod, latest):
                waiting.pop(spec.name, None)
                continue
            retry = await self._start_or_back_off(
                pod, spec, latest, sandbox_id, pod_ip, config, waiting, init=False
            )
            if retry is not None:
                retry_after = retry if retry_after is None else min(retry_after, retry)
        await self._prune(current, sandbox_id)
        return SyncResult(retry_after=retry_after)

    async def _new_sandbox(
        self, pod: core_pb2.Pod, current: RuntimePod | None, waiting: dict[str, Waiting]
    ) -> tuple[str, str] | None:
        attempt = 0
        if current is not None and current.sandboxes:
            attempt = max(s.attempt for s in current.sandboxes) + 1
            # A stale sandbox (failed start, or its network died) keeps its name
            # reserved in containerd: remove it and its containers first.
            await self._stop_running(None, current, _grace(pod))
            for sandbox in current.sandboxes:
                await self._remove_sandbox(sandbox.id)
        config = sandbox_config(pod, self.log_root, attempt)
        await asyncio.to_thread(Path(config.log_directory).mkdir, parents=True, exist_ok=True)
        try:
            sandbox_id = await self.runtime.run_pod_sandbox(config)
            status = await self.runtime.pod_sandbox_status(sandbox_id)
        except CRIError as exc:
            message = f"Failed to create pod sandbox: {exc.details}"
            for spec in [*pod.spec.init_containers, *pod.spec.containers]:
                waiting[spec.name] = Waiting("ContainerCreating", message)
            self.recorder.record(pod, "Warning", "FailedCreatePodSandBox", message)
            log.warning("sandbox failed", pod=pod.metadata.name, error=exc.details)
            return None
        return sandbox_id, status.status.network.ip

    async def _start_or_back_off(
        self,
        pod: core_pb2.Pod,
        spec: core_pb2.Container,
        latest: ContainerInstance | None,
        sandbox_id: str,
        pod_ip: str,
        sandbox: pb.PodSandboxConfig,
        waiting: dict[str, Waiting],
        init: bool,
    ) -> float | None:
        """Start the container's next instance unless it is backing off; returns
        when to try again (None: on the next change)."""
        key = f"{pod.metadata.uid}/{spec.name}"
        if latest is not None and latest.exited:
            ran_for = max(0.0, (latest.finished_at - latest.started_at) / 1e9)
            finished = latest.finished_at / 1e9
            remaining = self.backoff.remaining_after_exit(key, finished, ran_for)
            if remaining > 0:
                waiting[spec.name] = Waiting(
                    "CrashLoopBackOff",
                    f"back-off {self.backoff.current(key):.0f}s restarting failed "
                    f"container={spec.name} pod={pod.metadata.name}_{pod.metadata.namespace}",
                )
                self.recorder.record(
                    pod, "Warning", "BackOff", "Back-off restarting failed container"
                )
                return remaining
        attempt = latest.attempt + 1 if latest is not None else 0
        image_key = f"{pod.metadata.uid}/{spec.name}/image"
        if self.image_backoff.remaining(image_key) > 0:
            before = waiting.get(spec.name)
            if before is None or before.reason != "ErrImageNeverPull":
                waiting[spec.name] = Waiting(
                    "ImagePullBackOff", f'Back-off pulling image "{spec.image}"'
                )
            return self.image_backoff.remaining(image_key)
        image_ref = await self._ensure_image(pod, spec, sandbox, waiting)
        self.mark(pod.metadata.uid, "images")
        if image_ref is None:
            self.image_backoff.step(image_key)
            return self.image_backoff.remaining(image_key)
        self.image_backoff.forget(image_key)
        config = container_config(pod, spec, attempt, image_ref, pod_ip, self.host_ip, init)
        try:
            container_id = await self.runtime.create_container(sandbox_id, config, sandbox)
        except CRIError as exc:
            waiting[spec.name] = Waiting("CreateContainerError", exc.details)
            self.recorder.record(pod, "Warning", "Failed", f"Error: {exc.details}")
            return _SANDBOX_RETRY
        self.recorder.record(pod, "Normal", "Created", f"Created container {spec.name}")
        try:
            await self.runtime.start_container(container_id)
        except CRIError as exc:
            waiting[spec.name] = Waiting("RunContainerError", exc.details)
            self.recorder.record(pod, "Warning", "Failed", f"Error: {exc.details}")
            self.backoff.step(key)
            return self.backoff.current(key)
        if latest is not None:
            self.backoff.step(key)
        self.backoff.note_start(key, time.time())
        self.mark(pod.metadata.uid, "started")
        waiting.pop(spec.name, None)
        self.recorder.record(pod, "Normal", "Started", f"Started container {spec.name}")
        return None

    async def _ensure_image(
        self,
        pod: core_pb2.Pod,
        spec: core_pb2.Container,
        sandbox: pb.PodSandboxConfig,
        waiting: dict[str, Waiting],
    ) -> str | None:
        policy = spec.image_pull_policy or "IfNotPresent"
        try:
            present = await self.runtime.image_status(spec.image)
        except CRIError as exc:
            waiting[spec.name] = Waiting("ErrImagePull", exc.details)
            return None
        if present is not None and policy != "Always":
            return present.id or spec.image
        if policy == "Never":
            message = f'Container image "{spec.image}" is not present with pull policy of Never'
            waiting[spec.name] = Waiting("ErrImageNeverPull", message)
            self.recorder.record(pod, "Warning", "ErrImageNeverPull", message)
            return None
        self.recorder.record(pod, "Normal", "Pulling", f'Pulling image "{spec.image}"')
        started = time.monotonic()
        try:
            ref = await self.runtime.pull_image(spec.image, sandbox)
        except CRIError as exc:
            message = f'Failed to pull image "{spec.image}": {exc.details}'
            if present is not None:
                # Air-gapped nodes (images imported at start, as k3s does): a
                # manifest saying `image: busybox` (pull policy Always) still runs
                # with the image the node has.
                self.recorder.record(
                    pod, "Warning", "Failed", f"{message}; using the image present on the node"
                )
                return present.id or spec.image
            waiting[spec.name] = Waiting("ErrImagePull", message)
            self.recorder.record(pod, "Warning", "Failed", message)
            return None
        self.recorder.record(
            pod,
            "Normal",
            "Pulled",
            f'Successfully pulled image "{spec.image}" in {time.monotonic() - started:.3f}s',
        )
        return ref

    async def _prune(self, current: RuntimePod, sandbox_id: str) -> None:
        """Keep the two newest instances of each container: the current one and the
        one before it (for `logs --previous`)."""
        for name in {c.name for c in current.containers}:
            old = [c for c in current.instances(name)[2:] if c.exited]
            old += [c for c in current.instances(name) if c.sandbox_id != sandbox_id]
            for instance in {c.id: c for c in old}.values():
                if instance.running:
                    continue
                try:
                    await self.runtime.remove_container(instance.id)
                except CRIError as exc:
                    if not exc.not_found:
                        log.warning("remove container failed", error=exc.details)


def _grace(pod: core_pb2.Pod | None) -> int:
    if pod is None:
        return 2
    meta = pod.metadata
    if meta.HasField("deletion_grace_period_seconds"):
        return int(meta.deletion_grace_period_seconds)
    if pod.spec.HasField("termination_grace_period_seconds"):
        return int(pod.spec.termination_grace_period_seconds)
    return 30


def _should_restart(pod: core_pb2.Pod, instance: ContainerInstance) -> bool:
    policy = pod.spec.restart_policy or "Always"
    if policy == "Always":
        return True
    if policy == "OnFailure":
        return instance.exit_code != 0
    return False


def _all_done(pod: core_pb2.Pod, current: RuntimePod, sandbox_id: str) -> bool:
    """Every app container has exited for good (restartPolicy allows no more)."""
    for spec in pod.spec.containers:
        latest = current.latest(spec.name, sandbox_id)
        if latest is None or not latest.exited or _should_restart(pod, latest):
            return False
    return True
