"""An in-memory CRI runtime for tests and hollow nodes.

``FakeRuntime`` keeps sandboxes, containers and images in dicts and satisfies the
``Runtime`` protocol directly, so thousands of them can live in one process without
sockets. ``FakeCRIServer`` serves one over real gRPC (RuntimeService and
ImageService, same wire paths as containerd) for tests of ``RuntimeClient`` and for
running a real kubelet process against it.

Semantics follow containerd 1.6's CRI plugin where the kubelet can tell the
difference: NOT_FOUND for unknown ids (but Remove* of an unknown id succeeds), names
stay reserved until removal ("failed to reserve sandbox name"), StopContainer with
timeout 0 is SIGKILL (exit 137), ImageStatus of a missing image is an empty reply,
a failed start leaves the container EXITED with reason StartError and exit 128.

Container behaviour comes from its env (or ``FAKE_X=...`` words in command/args),
in the spirit of Nomad's mock driver:

  FAKE_RUN_FOR=2s          exit by itself after this long (default: run until stopped)
  FAKE_EXIT_CODE=3         exit code when it exits by itself (reason Completed/Error)
  FAKE_START_ERROR=msg     StartContainer fails with this message
  FAKE_OOM=1               killed by the OOM killer at FAKE_RUN_FOR (default at once);
                           also happens when FAKE_MEMORY exceeds the memory limit
  FAKE_STOP_DELAY=1s       takes this long to exit on SIGTERM (else killed, 137)
  FAKE_IGNORE_SIGTERM=1    never exits on SIGTERM: StopContainer waits out the timeout
  FAKE_STOP_EXIT_CODE=0    exit code after a graceful SIGTERM (default 143)
  FAKE_EXEC_STDOUT / FAKE_EXEC_STDERR / FAKE_EXEC_EXIT_CODE   ExecSync results
  FAKE_EXEC_DELAY=1s       ExecSync takes this long (DEADLINE_EXCEEDED past timeout)
  FAKE_EXEC_FAIL_AFTER=5s  ExecSync exits 1 once the container has run this long
  FAKE_MEMORY=64Mi, FAKE_CPU_MILLICORES=5   what the stats report

Without FAKE_EXEC_* settings, ExecSync knows ``echo``, ``true`` and ``false``.
A sandbox whose annotations carry ``fake.kubeling.io/run-pod-sandbox-error`` fails
RunPodSandbox with that message and leaves a NOTREADY sandbox holding its name, as
a containerd whose cleanup failed does.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import itertools
import json
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

from kubeling.common import rpc
from kubeling.cri.api import IMAGE_SERVICE, RUNTIME_SERVICE, pb
from kubeling.cri.errors import CRIError
from kubeling.cri.runtime import ExecResult

if TYPE_CHECKING:
    from kubeling.cri.runtime import Runtime

__all__ = [
    "SANDBOX_ERROR_ANNOTATION",
    "Behaviour",
    "FakeCRIServer",
    "FakeRuntime",
    "normalize_image",
    "parse_behaviour",
    "parse_duration",
]

SANDBOX_ERROR_ANNOTATION = "fake.kubeling.io/run-pod-sandbox-error"

RUNTIME_NAME = "kubeling-fake"
RUNTIME_VERSION = "0.1.0"

_CODE = grpc.StatusCode
_SIGKILL_EXIT = 137
_START_ERROR_EXIT = 128
_NS = 1_000_000_000


# -- behaviour -----------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_BYTE_UNITS = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "Ki": 1024, "Mi": 1024**2}
_BYTE_UNITS["Gi"] = 1024**3


def parse_duration(text: str) -> float:
    """Seconds from a Go-style duration ("1m30s", "500ms") or a bare number of seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def _parse_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)(|k|M|G|Ki|Mi|Gi)", text.strip())
    if not match:
        raise ValueError(f"invalid byte quantity {text!r}")
    return int(match[1]) * _BYTE_UNITS[match[2]]


def _parse_bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What a fake container does; see the module docstring for the knobs."""

    run_for: float | None = None
    exit_code: int = 0
    start_error: str = ""
    oom: bool = False
    stop_delay: float = 0.0
    stop_exit_code: int = 143
    exec_stdout: bytes | None = None
    exec_stderr: bytes = b""
    exec_exit_code: int | None = None
    exec_delay: float = 0.0
    exec_fail_after: float | None = None
    memory_bytes: int = 4 * 1024 * 1024
    cpu_millicores: int = 1


_PARSERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "FAKE_RUN_FOR": ("run_for", parse_duration),
    "FAKE_EXIT_CODE": ("exit_code", int),
    "FAKE_START_ERROR": ("start_error", str),
    "FAKE_OOM": ("oom", _parse_bool),
    "FAKE_STOP_DELAY": ("stop_delay", parse_duration),
    "FAKE_IGNORE_SIGTERM": ("stop_delay", lambda v: math.inf if _parse_bool(v) else 0.0),
    "FAKE_STOP_EXIT_CODE": ("stop_exit_code", int),
    "FAKE_EXEC_STDOUT": ("exec_stdout", str.encode),
    "FAKE_EXEC_STDERR": ("exec_stderr", str.encode),
    "FAKE_EXEC_EXIT_CODE": ("exec_exit_code", int),
    "FAKE_EXEC_DELAY": ("exec_delay", parse_duration),
    "FAKE_EXEC_FAIL_AFTER": ("exec_fail_after", parse_duration),
    "FAKE_MEMORY": ("memory_bytes", _parse_bytes),
    "FAKE_CPU_MILLICORES": ("cpu_millicores", int),
}


def parse_behaviour(config: pb.ContainerConfig) -> Behaviour:
    """Read FAKE_* settings from env, then from ``FAKE_X=...`` words in command/args.

    Raises ValueError for a malformed value, so typos fail CreateContainer loudly.
    """
    settings: dict[str, str] = {kv.key: kv.value for kv in config.envs}
    for word in itertools.chain(config.command, config.args):
        key, sep, value = word.partition("=")
        if sep and key in _PARSERS:
            settings[key] = value
    values: dict[str, Any] = {}
    for key, raw in settings.items():
        if key in _PARSERS:
            name, parse = _PARSERS[key]
            try:
                values[name] = parse(raw)
            except ValueError as exc:
                raise ValueError(f"{key}={raw!r}: {exc}") from None
    return Behaviour(**values)


# -- images --------------------------------------------------------------------


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


def _repository(ref: str) -> str:
    name = ref.partition("@")[0]
    head, slash, last = name.rpartition("/")
    return f"{head}{slash}{last.partition(':')[0]}"


@dataclass(slots=True)
class _Image:
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
class _Sandbox:
    id: str
    name: str
    config: pb.PodSandboxConfig
    runtime_handler: str
    created_at: int
    ip: str
    pid: int
    ready: bool = True
    containers: dict[str, _Container] = field(default_factory=dict)

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
            network=pb.PodSandboxNetworkStatus(ip=self.ip),
            linux=pb.LinuxPodSandboxStatus(namespaces=pb.Namespace(options=namespaces)),
            labels=self.config.labels,
            annotations=self.config.annotations,
            runtime_handler=self.runtime_handler,
        )


@dataclass(slots=True, eq=False)
class _Container:
    id: str
    name: str
    sandbox: _Sandbox
    config: pb.ContainerConfig
    behaviour: Behaviour
    image: _Image
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
            self._finish(code, reason, self.started_at + int(elapsed * _NS))

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
            image_ref=self.image_ref,
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
            image=self.config.image,
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


def _labels_match(labels: Mapping[str, str], selector: Mapping[str, str] | None) -> bool:
    return not selector or all(labels.get(k) == v for k, v in selector.items())


def _state_name(state: pb.ContainerState.ValueType) -> str:
    return pb.ContainerState.Name(state)


class _IPPool:
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
                _CODE.UNKNOWN,
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


# -- the runtime ---------------------------------------------------------------


class FakeRuntime:
    """An in-memory CRI runtime; satisfies ``kubeling.cri.Runtime`` without gRPC.

    ``images`` are present from the start; ``missing_images`` can never be pulled;
    ``delays`` maps a method name (e.g. "run_pod_sandbox") to seconds of latency.
    """

    def __init__(
        self,
        *,
        pod_cidr: str = "10.244.0.0/24",
        images: Iterable[str] = (),
        missing_images: Iterable[str] = (),
        delays: Mapping[str, float] | None = None,
    ) -> None:
        self._ips = _IPPool(pod_cidr)
        self._sandboxes: dict[str, _Sandbox] = {}
        self._containers: dict[str, _Container] = {}
        self._names: dict[str, str] = {}
        self._images: dict[str, _Image] = {}
        self._image_refs: dict[str, str] = {}
        self._missing = {normalize_image(i) for i in missing_images}
        self._delays = dict(delays or {})
        self._errors: dict[str, list[CRIError]] = {}
        self._pids = itertools.count(1000)
        self.network_ready = True
        self.runtime_ready = True
        for image in images:
            self._add_image(normalize_image(image))

    # -- test hooks ----------------------------------------------------------

    def inject_error(self, method: str, error: CRIError, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` (e.g. "start_container") fail."""
        self._errors.setdefault(method, []).extend([error] * times)

    def add_missing_image(self, image: str) -> None:
        self._missing.add(normalize_image(image))

    def exit_container(self, container_id: str, exit_code: int, reason: str = "Error") -> None:
        """Make a running container exit now, as a crash would."""
        self._container(container_id).kill(exit_code, reason)

    @property
    def sandbox_count(self) -> int:
        return len(self._sandboxes)

    @property
    def container_count(self) -> int:
        return len(self._containers)

    async def _enter(self, method: str) -> None:
        delay = self._delays.get(method)
        if delay:
            await asyncio.sleep(delay)
        queued = self._errors.get(method)
        if queued:
            raise queued.pop(0)

    # -- lookups -------------------------------------------------------------

    def _sandbox(self, sandbox_id: str, *, quote_id: bool = True) -> _Sandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            # containerd 1.6 names the id in every message but PodSandboxStatus's.
            what = f'sandbox "{sandbox_id}"' if quote_id else "sandbox"
            raise CRIError(_CODE.NOT_FOUND, f"an error occurred when try to find {what}: not found")
        return sandbox

    def _container(self, container_id: str) -> _Container:
        container = self._containers.get(container_id)
        if container is None:
            raise CRIError(
                _CODE.NOT_FOUND,
                f'an error occurred when try to find container "{container_id}": not found',
            )
        container.refresh(time.monotonic())
        return container

    def _reserve(self, kind: str, name: str, owner: str) -> None:
        holder = self._names.get(name)
        if holder is not None:
            raise CRIError(
                _CODE.UNKNOWN,
                f'failed to reserve {kind} name "{name}": name "{name}" is reserved for "{holder}"',
            )
        self._names[name] = owner

    def _new_id(self) -> str:
        while True:
            new = secrets.token_hex(32)
            if new not in self._sandboxes and new not in self._containers:
                return new

    # -- RuntimeService ------------------------------------------------------

    async def version(self) -> pb.VersionResponse:
        await self._enter("version")
        return pb.VersionResponse(
            version="0.1.0",
            runtime_name=RUNTIME_NAME,
            runtime_version=RUNTIME_VERSION,
            runtime_api_version="v1",
        )

    async def status(self, verbose: bool = False) -> pb.StatusResponse:
        await self._enter("status")
        conditions = [
            pb.RuntimeCondition(type="RuntimeReady", status=self.runtime_ready),
            pb.RuntimeCondition(
                type="NetworkReady",
                status=self.network_ready,
                reason="" if self.network_ready else "NetworkPluginNotReady",
                message=""
                if self.network_ready
                else "Network plugin returns error: cni plugin not initialized",
            ),
        ]
        info = {"config": json.dumps({"fake": True})} if verbose else {}
        return pb.StatusResponse(
            status=pb.RuntimeStatus(conditions=conditions),
            info=info,
            runtime_handlers=[pb.RuntimeHandler(name="")],
        )

    async def run_pod_sandbox(self, config: pb.PodSandboxConfig, runtime_handler: str = "") -> str:
        await self._enter("run_pod_sandbox")
        if not config.HasField("metadata"):
            raise CRIError(_CODE.INVALID_ARGUMENT, "sandbox config must include metadata")
        meta = config.metadata
        name = "_".join([meta.name, meta.namespace, meta.uid, str(meta.attempt)])
        sandbox_id = self._new_id()
        self._reserve("sandbox", name, sandbox_id)
        stored = pb.PodSandboxConfig()
        stored.CopyFrom(config)
        failure = config.annotations.get(SANDBOX_ERROR_ANNOTATION)
        host_network = config.linux.security_context.namespace_options.network == pb.NODE
        try:
            ip = "" if host_network or failure else self._ips.allocate()
        except CRIError as exc:
            del self._names[name]
            raise CRIError(
                exc.code, f'failed to setup network for sandbox "{sandbox_id}": {exc.details}'
            ) from None
        sandbox = _Sandbox(
            id=sandbox_id,
            name=name,
            config=stored,
            runtime_handler=runtime_handler,
            created_at=time.time_ns(),
            ip=ip,
            pid=next(self._pids),
            ready=not failure,
        )
        self._sandboxes[sandbox_id] = sandbox
        if failure:
            raise CRIError(_CODE.UNKNOWN, f"failed to start sandbox container task: {failure}")
        return sandbox_id

    async def stop_pod_sandbox(self, pod_sandbox_id: str) -> None:
        await self._enter("stop_pod_sandbox")
        sandbox = self._sandbox(pod_sandbox_id)
        for container in sandbox.containers.values():
            container.refresh(time.monotonic())
            container.kill(_SIGKILL_EXIT, "Error")
        if sandbox.ready:
            sandbox.ready = False
            # The IP goes back to the pool (CNI DEL) but the status still shows it.
            self._ips.release(sandbox.ip)

    async def remove_pod_sandbox(self, pod_sandbox_id: str) -> None:
        await self._enter("remove_pod_sandbox")
        sandbox = self._sandboxes.get(pod_sandbox_id)
        if sandbox is None:
            return
        if sandbox.ready:
            raise CRIError(
                _CODE.UNKNOWN, f'sandbox container "{pod_sandbox_id}" is not fully stopped'
            )
        for container in list(sandbox.containers.values()):
            self._drop_container(container)
        del self._sandboxes[pod_sandbox_id]
        self._names.pop(sandbox.name, None)

    async def pod_sandbox_status(
        self, pod_sandbox_id: str, verbose: bool = False
    ) -> pb.PodSandboxStatusResponse:
        await self._enter("pod_sandbox_status")
        sandbox = self._sandbox(pod_sandbox_id, quote_id=False)
        info = {}
        if verbose:
            info["info"] = json.dumps(
                {"pid": sandbox.pid, "runtimeHandler": sandbox.runtime_handler}
            )
        return pb.PodSandboxStatusResponse(
            status=sandbox.status(), info=info, timestamp=time.time_ns()
        )

    async def list_pod_sandbox(
        self,
        *,
        id: str = "",
        state: pb.PodSandboxState.ValueType | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[pb.PodSandbox]:
        await self._enter("list_pod_sandbox")
        if id:
            found = self._sandboxes.get(id)
            candidates: Iterable[_Sandbox] = [found] if found else []
        else:
            candidates = self._sandboxes.values()
        return [
            s.item()
            for s in candidates
            if (state is None or s.state == state) and _labels_match(s.config.labels, labels)
        ]

    async def create_container(
        self, pod_sandbox_id: str, config: pb.ContainerConfig, sandbox_config: pb.PodSandboxConfig
    ) -> str:
        await self._enter("create_container")
        sandbox = self._sandbox(pod_sandbox_id)
        if not config.HasField("metadata"):
            raise CRIError(_CODE.INVALID_ARGUMENT, "container config must include metadata")
        image = self._find_image(config.image.image)
        if image is None:
            raise CRIError(
                _CODE.NOT_FOUND,
                f'failed to resolve image "{config.image.image}": not found',
            )
        try:
            behaviour = parse_behaviour(config)
        except ValueError as exc:
            raise CRIError(_CODE.INVALID_ARGUMENT, f"fake container config: {exc}") from None
        meta, smeta = config.metadata, sandbox.config.metadata
        name = "_".join([meta.name, smeta.name, smeta.namespace, smeta.uid, str(meta.attempt)])
        container_id = self._new_id()
        self._reserve("container", name, container_id)
        stored = pb.ContainerConfig()
        stored.CopyFrom(config)
        container = _Container(
            id=container_id,
            name=name,
            sandbox=sandbox,
            config=stored,
            behaviour=behaviour,
            image=image,
            created_at=time.time_ns(),
            pid=next(self._pids),
        )
        self._containers[container_id] = container
        sandbox.containers[container_id] = container
        return container_id

    async def start_container(self, container_id: str) -> None:
        await self._enter("start_container")
        container = self._container(container_id)
        if container.state != pb.CONTAINER_CREATED:
            raise CRIError(
                _CODE.UNKNOWN,
                f'container "{container_id}" is in {_state_name(container.state)} state',
            )
        if not container.sandbox.ready:
            raise CRIError(
                _CODE.UNKNOWN, f'sandbox container "{container.sandbox.id}" is not running'
            )
        b = container.behaviour
        if b.start_error:
            container.state = pb.CONTAINER_EXITED
            container.exit_code = _START_ERROR_EXIT
            container.reason = "StartError"
            container.message = b.start_error
            container.finished_at = time.time_ns()
            raise CRIError(_CODE.UNKNOWN, f"failed to create containerd task: {b.start_error}")
        container.state = pb.CONTAINER_RUNNING
        container.started_at = time.time_ns()
        container.started_mono = time.monotonic()
        limit = container.config.linux.resources.memory_limit_in_bytes
        if b.oom or 0 < limit < b.memory_bytes:
            container.planned_exit = (_SIGKILL_EXIT, "OOMKilled")
            container.exit_at = container.started_mono + (b.run_for or 0.0)
        elif b.run_for is not None:
            container.planned_exit = (b.exit_code, "Completed" if b.exit_code == 0 else "Error")
            container.exit_at = container.started_mono + b.run_for

    async def stop_container(self, container_id: str, grace_period: int) -> None:
        await self._enter("stop_container")
        container = self._container(container_id)
        if container.state != pb.CONTAINER_RUNNING:
            return
        b = container.behaviour
        if grace_period > 0:
            # SIGTERM: the process exits after its stop delay, on its own first if its
            # run_for ends sooner, or is SIGKILLed when the timeout runs out.
            now = time.monotonic()
            natural = math.inf if container.exit_at is None else container.exit_at - now
            wait = min(b.stop_delay, natural, float(grace_period))
            if wait > 0:
                await asyncio.sleep(wait)
            container.refresh(time.monotonic())
            if b.stop_delay <= grace_period:
                reason = "Completed" if b.stop_exit_code == 0 else "Error"
                container.kill(b.stop_exit_code, reason)
        container.kill(_SIGKILL_EXIT, "Error")

    async def remove_container(self, container_id: str) -> None:
        await self._enter("remove_container")
        container = self._containers.get(container_id)
        if container is not None:
            self._drop_container(container)

    def _drop_container(self, container: _Container) -> None:
        container.refresh(time.monotonic())
        container.kill(_SIGKILL_EXIT, "Error")
        del self._containers[container.id]
        container.sandbox.containers.pop(container.id, None)
        self._names.pop(container.name, None)

    async def list_containers(
        self,
        *,
        id: str = "",
        pod_sandbox_id: str = "",
        state: pb.ContainerState.ValueType | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[pb.Container]:
        await self._enter("list_containers")
        return [c.item() for c in self._select(id, pod_sandbox_id, state, labels)]

    def _select(
        self,
        id: str,
        pod_sandbox_id: str,
        state: pb.ContainerState.ValueType | None,
        labels: Mapping[str, str] | None,
    ) -> list[_Container]:
        candidates: Iterable[_Container]
        if id:
            found = self._containers.get(id)
            candidates = [found] if found else []
        elif pod_sandbox_id:
            sandbox = self._sandboxes.get(pod_sandbox_id)
            candidates = list(sandbox.containers.values()) if sandbox else []
        else:
            candidates = self._containers.values()
        now = time.monotonic()
        selected = []
        for c in candidates:
            c.refresh(now)
            if pod_sandbox_id and c.sandbox.id != pod_sandbox_id:
                continue
            if (state is None or c.state == state) and _labels_match(c.config.labels, labels):
                selected.append(c)
        return selected

    async def container_status(
        self, container_id: str, verbose: bool = False
    ) -> pb.ContainerStatusResponse:
        await self._enter("container_status")
        container = self._container(container_id)
        info = {}
        if verbose:
            info["info"] = json.dumps(
                {"pid": container.pid, "sandboxID": container.sandbox.id, "fake": True}
            )
        return pb.ContainerStatusResponse(status=container.status(), info=info)

    async def exec_sync(
        self, container_id: str, cmd: Sequence[str], timeout_seconds: int = 0
    ) -> ExecResult:
        await self._enter("exec_sync")
        container = self._container(container_id)
        if container.state != pb.CONTAINER_RUNNING:
            raise CRIError(_CODE.UNKNOWN, f"container is in {_state_name(container.state)} state")
        b = container.behaviour
        if b.exec_delay:
            if 0 < timeout_seconds < b.exec_delay:
                await asyncio.sleep(timeout_seconds)
                raise CRIError(
                    _CODE.DEADLINE_EXCEEDED,
                    f"failed to exec in container: timeout {timeout_seconds}s exceeded: "
                    "context deadline exceeded",
                )
            await asyncio.sleep(b.exec_delay)
        running_for = time.monotonic() - container.started_mono
        if b.exec_fail_after is not None and running_for >= b.exec_fail_after:
            return ExecResult(b"", b"unhealthy\n", 1)
        stdout, code = b"", 0
        program = cmd[0].rsplit("/", 1)[-1] if cmd else ""
        if program == "echo":
            stdout = (" ".join(cmd[1:]) + "\n").encode()
        elif program == "false":
            code = 1
        if b.exec_stdout is not None:
            stdout = b.exec_stdout
        if b.exec_exit_code is not None:
            code = b.exec_exit_code
        return ExecResult(stdout, b.exec_stderr, code)

    def _stats(self, container: _Container) -> pb.ContainerStats:
        stats = pb.ContainerStats(
            attributes=container.attributes(),
            writable_layer=pb.FilesystemUsage(
                timestamp=time.time_ns(),
                fs_id=pb.FilesystemIdentifier(mountpoint="/var/lib/kubeling-fake"),
                used_bytes=pb.UInt64Value(value=4096),
                inodes_used=pb.UInt64Value(value=1),
            ),
        )
        if container.state == pb.CONTAINER_RUNNING:
            now = time.time_ns()
            b = container.behaviour
            nanocores = b.cpu_millicores * 1_000_000
            used = (now - container.started_at) * nanocores // _NS
            stats.cpu.timestamp = now
            stats.cpu.usage_core_nano_seconds.value = used
            stats.cpu.usage_nano_cores.value = nanocores
            stats.memory.timestamp = now
            stats.memory.working_set_bytes.value = b.memory_bytes
            stats.memory.usage_bytes.value = b.memory_bytes
            stats.memory.rss_bytes.value = b.memory_bytes
        return stats

    async def container_stats(self, container_id: str) -> pb.ContainerStats:
        await self._enter("container_stats")
        return self._stats(self._container(container_id))

    async def list_container_stats(
        self, *, id: str = "", pod_sandbox_id: str = "", labels: Mapping[str, str] | None = None
    ) -> list[pb.ContainerStats]:
        await self._enter("list_container_stats")
        return [self._stats(c) for c in self._select(id, pod_sandbox_id, None, labels)]

    # -- ImageService --------------------------------------------------------

    def _find_image(self, ref: str) -> _Image | None:
        if not ref:
            return None
        image = self._images.get(ref) or self._images.get(f"sha256:{ref}")
        if image is None:
            image_id = self._image_refs.get(normalize_image(ref))
            image = self._images.get(image_id) if image_id else None
        return image

    def _add_image(self, ref: str) -> _Image:
        known = self._image_refs.get(ref)
        if known is not None:
            return self._images[known]
        by_digest = "@" in ref
        # Content ids are derived from the name so every fake agrees on them.
        image_id = "sha256:" + hashlib.sha256(f"image:{ref}".encode()).hexdigest()
        digest = "sha256:" + hashlib.sha256(f"manifest:{ref}".encode()).hexdigest()
        image = _Image(
            id=image_id,
            repo_tags=[] if by_digest else [ref],
            repo_digests=[ref] if by_digest else [f"{_repository(ref)}@{digest}"],
            size=1024 * 1024 + int(image_id[7:12], 16) * 64,
        )
        self._images[image_id] = image
        for name in (*image.repo_tags, *image.repo_digests):
            self._image_refs[name] = image_id
        return image

    async def image_status(self, image: str) -> pb.Image | None:
        await self._enter("image_status")
        found = self._find_image(image)
        return found.message() if found else None

    async def pull_image(
        self, image: str, sandbox_config: pb.PodSandboxConfig | None = None
    ) -> str:
        await self._enter("pull_image")
        ref = normalize_image(image)
        if ref in self._missing or ref.startswith("sha256:"):
            raise CRIError(
                _CODE.NOT_FOUND,
                f'failed to pull and unpack image "{ref}": failed to resolve reference '
                f'"{ref}": {ref}: not found',
            )
        return self._add_image(ref).id

    async def list_images(self, image: str = "") -> list[pb.Image]:
        await self._enter("list_images")
        if image:
            found = self._find_image(image)
            return [found.message()] if found else []
        return [i.message() for i in self._images.values()]

    async def remove_image(self, image: str) -> None:
        await self._enter("remove_image")
        found = self._find_image(image)
        if found is None:
            return
        del self._images[found.id]
        for name in (*found.repo_tags, *found.repo_digests):
            self._image_refs.pop(name, None)


# -- gRPC ----------------------------------------------------------------------

_Handler = Callable[[Any], Awaitable[Message]]


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _unary(request_type: type[Message], handle: _Handler) -> Any:
    async def behaviour(request: Message, context: Any) -> Message:
        try:
            return await handle(request)
        except CRIError as exc:
            await context.abort(exc.code, exc.details)
            raise  # pragma: no cover - abort always raises

    return grpc.unary_unary_rpc_method_handler(
        behaviour, request_deserializer=request_type.FromString, response_serializer=_serialize
    )


def _optional_state(message: Message, field_name: str) -> Any:
    return getattr(message, field_name).state if message.HasField(field_name) else None


def _runtime_methods(rt: FakeRuntime) -> dict[str, Any]:
    async def run_pod_sandbox(r: pb.RunPodSandboxRequest) -> Message:
        sandbox_id = await rt.run_pod_sandbox(r.config, r.runtime_handler)
        return pb.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    async def stop_pod_sandbox(r: pb.StopPodSandboxRequest) -> Message:
        await rt.stop_pod_sandbox(r.pod_sandbox_id)
        return pb.StopPodSandboxResponse()

    async def remove_pod_sandbox(r: pb.RemovePodSandboxRequest) -> Message:
        await rt.remove_pod_sandbox(r.pod_sandbox_id)
        return pb.RemovePodSandboxResponse()

    async def list_pod_sandbox(r: pb.ListPodSandboxRequest) -> Message:
        f = r.filter
        items = await rt.list_pod_sandbox(
            id=f.id, state=_optional_state(f, "state"), labels=dict(f.label_selector)
        )
        return pb.ListPodSandboxResponse(items=items)

    async def create_container(r: pb.CreateContainerRequest) -> Message:
        container_id = await rt.create_container(r.pod_sandbox_id, r.config, r.sandbox_config)
        return pb.CreateContainerResponse(container_id=container_id)

    async def start_container(r: pb.StartContainerRequest) -> Message:
        await rt.start_container(r.container_id)
        return pb.StartContainerResponse()

    async def stop_container(r: pb.StopContainerRequest) -> Message:
        await rt.stop_container(r.container_id, int(r.timeout))
        return pb.StopContainerResponse()

    async def remove_container(r: pb.RemoveContainerRequest) -> Message:
        await rt.remove_container(r.container_id)
        return pb.RemoveContainerResponse()

    async def list_containers(r: pb.ListContainersRequest) -> Message:
        f = r.filter
        containers = await rt.list_containers(
            id=f.id,
            pod_sandbox_id=f.pod_sandbox_id,
            state=_optional_state(f, "state"),
            labels=dict(f.label_selector),
        )
        return pb.ListContainersResponse(containers=containers)

    async def exec_sync(r: pb.ExecSyncRequest) -> Message:
        out, err, code = await rt.exec_sync(r.container_id, list(r.cmd), int(r.timeout))
        return pb.ExecSyncResponse(stdout=out, stderr=err, exit_code=code)

    async def container_stats(r: pb.ContainerStatsRequest) -> Message:
        return pb.ContainerStatsResponse(stats=await rt.container_stats(r.container_id))

    async def list_container_stats(r: pb.ListContainerStatsRequest) -> Message:
        f = r.filter
        stats = await rt.list_container_stats(
            id=f.id, pod_sandbox_id=f.pod_sandbox_id, labels=dict(f.label_selector)
        )
        return pb.ListContainerStatsResponse(stats=stats)

    async def version(r: pb.VersionRequest) -> Message:
        return await rt.version()

    async def status(r: pb.StatusRequest) -> Message:
        return await rt.status(r.verbose)

    async def pod_sandbox_status(r: pb.PodSandboxStatusRequest) -> Message:
        return await rt.pod_sandbox_status(r.pod_sandbox_id, r.verbose)

    async def container_status(r: pb.ContainerStatusRequest) -> Message:
        return await rt.container_status(r.container_id, r.verbose)

    return {
        "Version": _unary(pb.VersionRequest, version),
        "Status": _unary(pb.StatusRequest, status),
        "RunPodSandbox": _unary(pb.RunPodSandboxRequest, run_pod_sandbox),
        "StopPodSandbox": _unary(pb.StopPodSandboxRequest, stop_pod_sandbox),
        "RemovePodSandbox": _unary(pb.RemovePodSandboxRequest, remove_pod_sandbox),
        "PodSandboxStatus": _unary(pb.PodSandboxStatusRequest, pod_sandbox_status),
        "ListPodSandbox": _unary(pb.ListPodSandboxRequest, list_pod_sandbox),
        "CreateContainer": _unary(pb.CreateContainerRequest, create_container),
        "StartContainer": _unary(pb.StartContainerRequest, start_container),
        "StopContainer": _unary(pb.StopContainerRequest, stop_container),
        "RemoveContainer": _unary(pb.RemoveContainerRequest, remove_container),
        "ListContainers": _unary(pb.ListContainersRequest, list_containers),
        "ContainerStatus": _unary(pb.ContainerStatusRequest, container_status),
        "ExecSync": _unary(pb.ExecSyncRequest, exec_sync),
        "ContainerStats": _unary(pb.ContainerStatsRequest, container_stats),
        "ListContainerStats": _unary(pb.ListContainerStatsRequest, list_container_stats),
    }


def _image_methods(rt: FakeRuntime) -> dict[str, Any]:
    async def image_status(r: pb.ImageStatusRequest) -> Message:
        return pb.ImageStatusResponse(image=await rt.image_status(r.image.image))

    async def pull_image(r: pb.PullImageRequest) -> Message:
        config = r.sandbox_config if r.HasField("sandbox_config") else None
        return pb.PullImageResponse(image_ref=await rt.pull_image(r.image.image, config))

    async def list_images(r: pb.ListImagesRequest) -> Message:
        return pb.ListImagesResponse(images=await rt.list_images(r.filter.image.image))

    async def remove_image(r: pb.RemoveImageRequest) -> Message:
        await rt.remove_image(r.image.image)
        return pb.RemoveImageResponse()

    return {
        "ImageStatus": _unary(pb.ImageStatusRequest, image_status),
        "PullImage": _unary(pb.PullImageRequest, pull_image),
        "ListImages": _unary(pb.ListImagesRequest, list_images),
        "RemoveImage": _unary(pb.RemoveImageRequest, remove_image),
    }


class FakeCRIServer:
    """Serves a ``FakeRuntime`` over gRPC on ``listen`` ("unix:///path" or "host:port").

    Unimplemented CRI methods (streaming exec, events, ...) answer UNIMPLEMENTED.
    """

    def __init__(self, runtime: FakeRuntime | None = None, listen: str = "127.0.0.1:0") -> None:
        self.runtime = runtime or FakeRuntime()
        handlers = [
            grpc.method_handlers_generic_handler(RUNTIME_SERVICE, _runtime_methods(self.runtime)),
            grpc.method_handlers_generic_handler(IMAGE_SERVICE, _image_methods(self.runtime)),
        ]
        self._server = rpc.Server(listen, handlers, [RUNTIME_SERVICE, IMAGE_SERVICE])
        if listen.startswith("unix:"):
            self.endpoint = listen
        else:
            host = listen.rsplit(":", 1)[0]
            self.endpoint = f"{host}:{self._server.port}"

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float = 0.5) -> None:
        await self._server.stop(grace)

    async def __aenter__(self) -> FakeCRIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


if TYPE_CHECKING:

    def _satisfies_protocol(fake: FakeRuntime) -> Runtime:
        return fake
