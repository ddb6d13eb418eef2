"""The fake's runtime: ``FakeRuntime`` keeps sandboxes, containers and images in dicts
and satisfies the ``Runtime`` protocol directly, so thousands of them can live in one
process without sockets (hollow nodes). server.py serves one over gRPC.

Semantics follow containerd 1.6's CRI plugin, error messages included, and
tests/cri/test_contract.py runs the same tests against both: NOT_FOUND for unknown
ids (but Remove* of an unknown id succeeds), names stay reserved until removal
("failed to reserve sandbox name"), StopContainer with timeout 0 is SIGKILL (exit
137), a failed start leaves the container EXITED with reason StartError and exit
128, RemovePodSandbox stops a ready sandbox first, a stopped sandbox reports no IP
and takes no new containers, ContainerStatus names the image by its first tag,
ListImages ignores its filter, images are found by name, id or id prefix, and
PullImage asks the registry even for an image that is present.

A sandbox whose annotations carry ``fake.kubeling.io/run-pod-sandbox-error`` fails
RunPodSandbox with that message and leaves a NOTREADY sandbox holding its name, as
a containerd whose cleanup failed does.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import grpc

from kubeling.cri.api import pb
from kubeling.cri.errors import CRIError
from kubeling.cri.fake.behaviour import parse_behaviour
from kubeling.cri.fake.state import (
    NS,
    SIGKILL_EXIT,
    START_ERROR_EXIT,
    Container,
    Image,
    IPPool,
    Sandbox,
    labels_match,
    normalize_image,
    repository,
    state_name,
)
from kubeling.cri.fake.streaming import FakeStreamingServer, Session
from kubeling.cri.runtime import ExecResult

if TYPE_CHECKING:
    from kubeling.cri.runtime import Runtime

SANDBOX_ERROR_ANNOTATION = "fake.kubeling.io/run-pod-sandbox-error"

RUNTIME_NAME = "kubeling-fake"
RUNTIME_VERSION = "0.1.0"

_CODE = grpc.StatusCode
_ID = re.compile(r"sha256:[0-9a-f]{64}")
_ID_PREFIX = re.compile(r"(sha256:)?[0-9a-f]+")


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
        streaming: bool = False,
    ) -> None:
        """`streaming`: answer Exec/Attach/PortForward with URLs of a fake streaming
        server (close it with `close_streaming`)."""
        self.streaming = FakeStreamingServer() if streaming else None
        self._ips = IPPool(pod_cidr)
        self._sandboxes: dict[str, Sandbox] = {}
        self._containers: dict[str, Container] = {}
        self._names: dict[str, str] = {}
        self._images: dict[str, Image] = {}
        self._image_refs: dict[str, str] = {}
        self._missing = {normalize_image(i) for i in missing_images}
        self._delays = dict(delays or {})
        self._errors: dict[str, list[CRIError]] = {}
        self._pids = itertools.count(1000)
        self.network_ready = True
        self.runtime_ready = True
        for image in images:
            self._add_image(normalize_image(image), pulled=False)

    async def close_streaming(self) -> None:
        if self.streaming is not None:
            await self.streaming.close()

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

    def _sandbox(self, sandbox_id: str, *, quote_id: bool = True) -> Sandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            # containerd 1.6 names the id in every message but PodSandboxStatus's.
            what = f'sandbox "{sandbox_id}"' if quote_id else "sandbox"
            raise CRIError(_CODE.NOT_FOUND, f"an error occurred when try to find {what}: not found")
        return sandbox

    def _container(self, container_id: str) -> Container:
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
        sandbox = Sandbox(
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
        self._stop_sandbox(self._sandbox(pod_sandbox_id))

    def _stop_sandbox(self, sandbox: Sandbox) -> None:
        for container in sandbox.containers.values():
            container.refresh(time.monotonic())
            container.kill(SIGKILL_EXIT, "Error")
        if sandbox.ready:
            sandbox.ready = False
            self._ips.release(sandbox.ip)  # CNI DEL

    async def remove_pod_sandbox(self, pod_sandbox_id: str) -> None:
        await self._enter("remove_pod_sandbox")
        sandbox = self._sandboxes.get(pod_sandbox_id)
        if sandbox is None:
            return
        # containerd 1.6 stops a sandbox that is still ready rather than refusing.
        self._stop_sandbox(sandbox)
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
            candidates: Iterable[Sandbox] = [found] if found else []
        else:
            candidates = self._sandboxes.values()
        return [
            s.item()
            for s in candidates
            if (state is None or s.state == state) and labels_match(s.config.labels, labels)
        ]

    async def create_container(
        self, pod_sandbox_id: str, config: pb.ContainerConfig, sandbox_config: pb.PodSandboxConfig
    ) -> str:
        await self._enter("create_container")
        sandbox = self._sandbox(pod_sandbox_id)
        if not sandbox.ready:
            # containerd joins the sandbox's namespaces through its (gone) task.
            raise CRIError(
                _CODE.NOT_FOUND,
                "failed to get sandbox container task: no running task found: "
                f"task {sandbox.id} not found: not found",
            )
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
        container = Container(
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
                f'failed to set starting state for container "{container_id}": '
                f"container is in {state_name(container.state)} state",
            )
        if not container.sandbox.ready:
            raise CRIError(
                _CODE.UNKNOWN, f'sandbox container "{container.sandbox.id}" is not running'
            )
        b = container.behaviour
        if b.start_error:
            container.state = pb.CONTAINER_EXITED
            container.exit_code = START_ERROR_EXIT
            container.reason = "StartError"
            container.message = b.start_error
            container.finished_at = time.time_ns()
            raise CRIError(_CODE.UNKNOWN, f"failed to create containerd task: {b.start_error}")
        container.state = pb.CONTAINER_RUNNING
        container.started_at = time.time_ns()
        container.started_mono = time.monotonic()
        limit = container.config.linux.resources.memory_limit_in_bytes
        if b.oom or 0 < limit < b.memory_bytes:
            container.planned_exit = (SIGKILL_EXIT, "OOMKilled")
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
        container.kill(SIGKILL_EXIT, "Error")

    async def remove_container(self, container_id: str) -> None:
        await self._enter("remove_container")
        container = self._containers.get(container_id)
        if container is not None:
            self._drop_container(container)

    def _drop_container(self, container: Container) -> None:
        container.refresh(time.monotonic())
        container.kill(SIGKILL_EXIT, "Error")
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
    ) -> list[Container]:
        candidates: Iterable[Container]
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
            if (state is None or c.state == state) and labels_match(c.config.labels, labels):
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
            raise CRIError(_CODE.UNKNOWN, f"container is in {state_name(container.state)} state")
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

    # Streaming sessions: URLs of a fake streaming server (cri/fake/streaming.py),
    # started on first use when `streaming` is on, else UNIMPLEMENTED.
    async def exec(self, container_id: str, cmd: Sequence[str], *, tty: bool, stdin: bool) -> str:
        await self._enter("exec")
        container = self._running(container_id)
        code = container.behaviour.exec_exit_code or 0
        return await self._stream_url(Session("exec", list(cmd), tty, stdin, code))

    async def attach(self, container_id: str, *, tty: bool, stdin: bool) -> str:
        await self._enter("attach")
        self._running(container_id)
        return await self._stream_url(Session("attach", [], tty, stdin))

    async def port_forward(self, pod_sandbox_id: str, port: int) -> str:
        await self._enter("port_forward")
        if pod_sandbox_id not in self._sandboxes:
            raise CRIError(_CODE.NOT_FOUND, f"sandbox {pod_sandbox_id} not found")
        return await self._stream_url(Session("portforward", port=port))

    def _running(self, container_id: str) -> Container:
        container = self._container(container_id)
        if container.state != pb.CONTAINER_RUNNING:
            raise CRIError(_CODE.UNKNOWN, f"container is in {state_name(container.state)} state")
        return container

    async def _stream_url(self, session: Session) -> str:
        if self.streaming is None:
            raise CRIError(_CODE.UNIMPLEMENTED, "the fake runtime has no streaming server")
        return await self.streaming.url(session)

    def _stats(self, container: Container) -> pb.ContainerStats:
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
            used = (now - container.started_at) * nanocores // NS
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

    def _find_image(self, ref: str) -> Image | None:
        """As containerd's CRI: by name first, then by id or a unique id prefix."""
        if not ref:
            return None
        image_id = self._image_refs.get(normalize_image(ref)) if not _ID.match(ref) else None
        if image_id is None and _ID_PREFIX.fullmatch(ref):
            prefix = ref if ref.startswith("sha256:") else f"sha256:{ref}"
            matches = [i for i in self._images if i.startswith(prefix)]
            image_id = matches[0] if len(matches) == 1 else None
        return self._images.get(image_id) if image_id else None

    def _add_image(self, ref: str, *, pulled: bool) -> Image:
        """Store image `ref`. A pulled image is also named by its repo digest; one
        present from the start is like one `ctr images import`ed: tags only."""
        # Content ids are derived from the name so every fake agrees on them.
        digest = "sha256:" + hashlib.sha256(f"manifest:{ref}".encode()).hexdigest()
        known = self._image_refs.get(ref)
        if known is not None:
            image = self._images[known]
            if pulled and not image.repo_digests:
                self._name_image(image, f"{repository(ref)}@{digest}", digest=True)
            return image
        by_digest = "@" in ref
        image_id = "sha256:" + hashlib.sha256(f"image:{ref}".encode()).hexdigest()
        image = Image(
            id=image_id,
            repo_tags=[],
            repo_digests=[],
            size=1024 * 1024 + int(image_id[7:12], 16) * 64,
        )
        self._images[image_id] = image
        if by_digest:
            self._name_image(image, ref, digest=True)
        else:
            self._name_image(image, ref, digest=False)
            if pulled:
                self._name_image(image, f"{repository(ref)}@{digest}", digest=True)
        return image

    def _name_image(self, image: Image, name: str, *, digest: bool) -> None:
        (image.repo_digests if digest else image.repo_tags).append(name)
        self._image_refs[name] = image.id

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
        # Like containerd, ask the registry even when the image is here already.
        return self._add_image(ref, pulled=True).id

    async def list_images(self, image: str = "") -> list[pb.Image]:
        """Every image: containerd 1.6 ignores ListImages' filter, so the fake does."""
        await self._enter("list_images")
        return [i.message() for i in self._images.values()]

    async def remove_image(self, image: str) -> None:
        await self._enter("remove_image")
        found = self._find_image(image)
        if found is None:
            return
        del self._images[found.id]
        for name in (*found.repo_tags, *found.repo_digests):
            self._image_refs.pop(name, None)


if TYPE_CHECKING:

    def _satisfies_protocol(fake: FakeRuntime) -> Runtime:
        return fake
