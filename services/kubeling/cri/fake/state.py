"""The fake's runtime objects: images, sandboxes and containers with containerd's
state transitions, and a host-local style IP pool. ``FakeRuntime`` (runtime.py)
keeps them and answers CRI calls with them."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc

from kubeling.cri.api import pb
from kubeling.cri.errors import CRIError
from kubeling.cri.fake.behaviour import Behaviour

SIGKILL_EXIT = 137
START_ERROR_EXIT = 128
NS = 1_000_000_000


def normalize_image(ref: str) -> str:
    """Docker-style reference normalisation, as containerd's CRI plugin does it.

    "busybox" -> "docker.io/library/busybox:latest"; image ids pass through.
    """
    if ref.startswith("sha256:"):
        return ref
    name, _, digest = ref.partition("@")
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, rest
    else:
        domain, path = "docker.io", name
    if domain == "docker.io" and "/" not in path:
        path = f"library/{path}"
    if not digest and ":" not in path.rsplit("/", 1)[-1]:
        path += ":latest"
    return f"{domain}/{path}@{digest}" if digest else f"{domain}/{path}"


def repository(ref: str) -> str:
    name = ref.partition("@")[0]
    head, slash, last = name.rpartition("/")
    return f"{head}{slash}{last.partition(':')[0]}"


@dataclass(slots=True)
class Image:
    id: str
    repo_tags: list[str]
    repo_digests: list[str]
    size: int

    def message(self) -> pb.Image:
        return pb.Image(
            id=self.id,
            repo_tags=self.repo_tags,
            repo_digests=self.repo_digests,
            size=self.size,
            spec=pb.ImageSpec(image=self.id),
        )


# -- sandboxes and containers --------------------------------------------------


@dataclass(slots=True, eq=False)
class Sandbox:
    id: str
    name: str
    config: pb.PodSandboxConfig
    runtime_handler: str
    created_at: int
    ip: str
    pid: int
    ready: bool = True
    containers: dict[str, Container] = field(default_factory=dict)

    @property
    def state(self) -> pb.PodSandboxState.ValueType:
        return pb.SANDBOX_READY if self.ready else pb.SANDBOX_NOTREADY

    def item(self) -> pb.PodSandbox:
        return pb.PodSandbox(
            id=self.id,
            metadata=self.config.metadata,
            state=self.state,
            created_at=self.created_at,
            labels=self.config.labels,
            annotations=self.config.annotations,
            runtime_handler=self.runtime_handler,
        )

    def status(self) -> pb.PodSandboxStatus:
        namespaces = self.config.linux.security_context.namespace_options
        return pb.PodSandboxStatus(
            id=self.id,
            metadata=self.config.metadata,
            state=self.state,
            created_at=self.created_at,
            # A stopped sandbox's network is gone: containerd reports no IP.
            network=pb.PodSandboxNetworkStatus(ip=self.ip if self.ready else ""),
            linux=pb.LinuxPodSandboxStatus(namespaces=pb.Namespace(options=namespaces)),
            labels=self.config.labels,
            annotations=self.config.annotations,
            runtime_handler=self.runtime_handler,
        )


@dataclass(slots=True, eq=False)
class Container:
    id: str
    name: str
    sandbox: Sandbox
    config: pb.ContainerConfig
    behaviour: Behaviour
    image: Image
    created_at: int
    pid: int
    state: pb.ContainerState.ValueType = pb.CONTAINER_CREATED
    started_at: int = 0
    started_mono: float = 0.0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    # Exits are computed lazily when the state is read: no task or timer per
    # container, which is what lets one process host thousands of them.
    exit_at: float | None = None
    planned_exit: tuple[int, str] = (0, "Completed")

    def refresh(self, now: float) -> None:
        if self.state == pb.CONTAINER_RUNNING and self.exit_at is not None and now >= self.exit_at:
            code, reason = self.planned_exit
            elapsed = self.exit_at - self.started_mono
            self._finish(code, reason, self.started_at + int(elapsed * NS))

    def kill(self, exit_code: int, reason: str) -> None:
        if self.state == pb.CONTAINER_RUNNING:
            self._finish(exit_code, reason, time.time_ns())

    def _finish(self, exit_code: int, reason: str, finished_at: int) -> None:
        self.state = pb.CONTAINER_EXITED
        self.exit_code = exit_code
        self.reason = reason
        self.finished_at = finished_at
        self.exit_at = None

    def item(self) -> pb.Container:
        return pb.Container(
            id=self.id,
            pod_sandbox_id=self.sandbox.id,
            metadata=self.config.metadata,
            image=self.config.image,
            # containerd lists the image id here; only the status names a digest.
            image_ref=self.image.id,
            image_id=self.image.id,
            state=self.state,
            created_at=self.created_at,
            labels=self.config.labels,
            annotations=self.config.annotations,
        )

    @property
    def image_ref(self) -> str:
        return self.image.repo_digests[0] if self.image.repo_digests else self.image.id

    def status(self) -> pb.ContainerStatus:
        log_path = ""
        if self.config.log_path:
            log_path = f"{self.sandbox.config.log_directory.rstrip('/')}/{self.config.log_path}"
        resources = None
        if self.config.HasField("linux") and self.config.linux.HasField("resources"):
            resources = pb.ContainerResources(linux=self.config.linux.resources)
        return pb.ContainerStatus(
            id=self.id,
            metadata=self.config.metadata,
            state=self.state,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            exit_code=self.exit_code,
            # As containerd: the image's first tag, whatever name the config used.
            image=pb.ImageSpec(image=next(iter(self.image.repo_tags), self.config.image.image)),
            image_ref=self.image_ref,
            image_id=self.image.id,
            reason=self.reason,
            message=self.message,
            labels=self.config.labels,
            annotations=self.config.annotations,
            mounts=self.config.mounts,
            log_path=log_path,
            resources=resources,
        )

    def attributes(self) -> pb.ContainerAttributes:
        return pb.ContainerAttributes(
            id=self.id,
            metadata=self.config.metadata,
            labels=self.config.labels,
            annotations=self.config.annotations,
        )


def labels_match(labels: Mapping[str, str], selector: Mapping[str, str] | None) -> bool:
    return not selector or all(labels.get(k) == v for k, v in selector.items())


def state_name(state: pb.ContainerState.ValueType) -> str:
    return pb.ContainerState.Name(state)


class IPPool:
    """host-local style: round-robin over the range, skipping network and gateway."""

    def __init__(self, cidr: str) -> None:
        self._net = ipaddress.ip_network(cidr, strict=False)
        size = self._net.num_addresses
        # .0 is the network, .1 the bridge gateway; IPv4 also loses the broadcast.
        self._first = 2
        self._last = size - (2 if self._net.version == 4 else 1)
        self._cursor = self._first
        self._used: set[int] = set()

    def allocate(self) -> str:
        span = self._last - self._first + 1
        if len(self._used) >= span:
            raise CRIError(
                grpc.StatusCode.UNKNOWN,
                'plugin type="host-local" failed (add): failed to allocate for range 0: '
                f"no IP addresses available in range set: {self._net}",
            )
        while self._cursor in self._used:
            self._cursor = self._first + (self._cursor + 1 - self._first) % span
        offset = self._cursor
        self._used.add(offset)
        self._cursor = self._first + (offset + 1 - self._first) % span
        return str(self._net.network_address + offset)

    def release(self, ip: str) -> None:
        if ip:
            self._used.discard(int(ipaddress.ip_address(ip)) - int(self._net.network_address))
