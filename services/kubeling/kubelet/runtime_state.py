"""What the container runtime holds for each pod, read in one relist.

A relist (upstream's PLEG) lists the sandboxes and containers the kubelet made
(found by label, so it works the same after a kubelet restart) and the status of
each container. Everything the kubelet decides is computed from this snapshot and
the pod's spec; nothing is remembered only in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubeling.cri.api import pb
from kubeling.cri.errors import CRIError
from kubeling.cri.runtime import Runtime
from kubeling.kubelet import labels


@dataclass
class ContainerInstance:
    id: str
    name: str
    attempt: int
    sandbox_id: str
    state: int  # pb.ContainerState
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    created_at: int = 0  # ns
    started_at: int = 0
    finished_at: int = 0
    image: str = ""
    image_ref: str = ""
    log_path: str = ""
    hash: str = ""
    init: bool = False

    @property
    def running(self) -> bool:
        return self.state == pb.CONTAINER_RUNNING

    @property
    def exited(self) -> bool:
        return self.state == pb.CONTAINER_EXITED

    @property
    def created(self) -> bool:
        return self.state == pb.CONTAINER_CREATED

    def key(self) -> tuple[object, ...]:
        """What a change of which must wake the pod's worker."""
        return (self.id, self.state, self.exit_code, self.started_at, self.finished_at)


@dataclass
class SandboxInstance:
    id: str
    attempt: int
    ready: bool
    created_at: int
    ip: str = ""


@dataclass
class RuntimePod:
    uid: str
    namespace: str = ""
    name: str = ""
    sandboxes: list[SandboxInstance] = field(default_factory=list)
    containers: list[ContainerInstance] = field(default_factory=list)

    @property
    def sandbox(self) -> SandboxInstance | None:
        """The newest sandbox (the one the pod's containers belong to)."""
        return max(self.sandboxes, key=lambda s: (s.attempt, s.created_at), default=None)

    def instances(self, name: str, sandbox_id: str | None = None) -> list[ContainerInstance]:
        """Instances of one container, newest first (optionally of one sandbox)."""
        found = [
            c
            for c in self.containers
            if c.name == name and (sandbox_id is None or c.sandbox_id == sandbox_id)
        ]
        return sorted(found, key=lambda c: (c.attempt, c.created_at), reverse=True)

    def latest(self, name: str, sandbox_id: str | None = None) -> ContainerInstance | None:
        found = self.instances(name, sandbox_id)
        return found[0] if found else None

    def key(self) -> tuple[object, ...]:
        return (
            tuple(sorted((s.id, s.ready, s.ip) for s in self.sandboxes)),
            tuple(sorted(c.key() for c in self.containers)),
        )


class Relister:
    """Reads the runtime's state; remembers what never changes for a running
    container (start time, log path) so a relist costs two list calls plus one
    status call per container that is not running."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._running: dict[str, tuple[int, str]] = {}

    async def relist(self, uid: str = "") -> dict[str, RuntimePod]:
        """Everything the kubelet runs (or one pod's part of it), by pod uid."""
        runtime = self._runtime
        managed = {labels.MANAGED_BY: labels.MANAGER}
        if uid:
            managed[labels.POD_UID] = uid
        pods: dict[str, RuntimePod] = {}

        def pod_for(meta_labels: dict[str, str]) -> RuntimePod:
            uid = meta_labels.get(labels.POD_UID, "")
            pod = pods.get(uid)
            if pod is None:
                pod = pods[uid] = RuntimePod(
                    uid,
                    meta_labels.get(labels.POD_NAMESPACE, ""),
                    meta_labels.get(labels.POD_NAME, ""),
                )
            return pod

        for sandbox in await runtime.list_pod_sandbox(labels=managed):
            pod = pod_for(dict(sandbox.labels))
            ready = sandbox.state == pb.SANDBOX_READY
            ip = ""
            if ready:
                try:
                    sandbox_status = await runtime.pod_sandbox_status(sandbox.id)
                    ip = sandbox_status.status.network.ip
                except CRIError as exc:
                    if not exc.not_found:
                        raise
                    continue
            pod.sandboxes.append(
                SandboxInstance(sandbox.id, sandbox.metadata.attempt, ready, sandbox.created_at, ip)
            )
        still_running: dict[str, tuple[int, str]] = {}
        for container in await runtime.list_containers(labels=managed):
            pod = pod_for(dict(container.labels))
            instance = ContainerInstance(
                id=container.id,
                name=container.labels.get(labels.CONTAINER_NAME, container.metadata.name),
                attempt=container.metadata.attempt,
                sandbox_id=container.pod_sandbox_id,
                state=container.state,
                created_at=container.created_at,
                image=container.image.image,
                image_ref=container.image_ref,
                hash=container.annotations.get(labels.CONTAINER_HASH, ""),
                init=container.annotations.get(labels.INIT_CONTAINER) == "true",
            )
            known = self._running.get(container.id)
            if instance.running and known is not None:
                instance.started_at, instance.log_path = known
                still_running[container.id] = known
            else:
                try:
                    status = (await runtime.container_status(container.id)).status
                except CRIError as exc:
                    if exc.not_found:
                        continue
                    raise
                instance.state = status.state
                instance.exit_code = status.exit_code
                instance.reason = status.reason
                instance.message = status.message
                instance.started_at = status.started_at
                instance.finished_at = status.finished_at
                instance.log_path = status.log_path
                if instance.running:
                    still_running[container.id] = (status.started_at, status.log_path)
            pod.containers.append(instance)
        if uid:
            self._running.update(still_running)
        else:
            self._running = still_running
        return pods
