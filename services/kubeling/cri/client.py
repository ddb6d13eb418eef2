"""A thin, typed asyncio client for a CRI runtime (containerd, or the fake) over gRPC.

Calls return the CRI protobuf messages unchanged. Failures raise ``CRIError``.
Idempotent calls are retried with back-off while the runtime is UNAVAILABLE (e.g.
containerd restarting); calls that create things (RunPodSandbox, CreateContainer,
StartContainer, ExecSync) are not, because a lost reply may hide a success and a
blind retry would then trip over the name it reserved.

Every call, retries included, is reported once to ``observe(operation_type,
seconds, failed)`` under upstream's operation names ("run_podsandbox",
"list_containers", ...): the kubelet feeds its
``kubelet_runtime_operations_*`` series from it.
"""

from __future__ import annotations

import asyncio
import enum
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from kubeling.common import rpc
from kubeling.cri.api import IMAGE_SERVICE, RUNTIME_SERVICE, pb
from kubeling.cri.errors import CRIError
from kubeling.cri.runtime import ExecResult

R = TypeVar("R", bound=Message)


class _Default(enum.Enum):
    TOKEN = enum.auto()


_DEFAULT = _Default.TOKEN

# kubelet's --runtime-request-timeout default.
DEFAULT_TIMEOUT = 120.0

# (operation_type, seconds, failed) once per call.
OperationObserver = Callable[[str, float, bool], None]


def operation_type(method: str) -> str:
    """Upstream's label for a CRI method: RunPodSandbox -> run_podsandbox."""
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", method).lower()
    return snake.replace("pod_sandbox", "podsandbox")


def _is_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, CRIError) and exc.unavailable


# A local runtime that restarts (containerd) should be redialled within seconds,
# not after gRPC's default back-off of up to two minutes.
# No keepalive pings on an idle channel: containerd (grpc-go's default enforcement)
# answers pings more often than every 5 minutes without calls with "too_many_pings"
# and drops the connection. A local socket needs no keepalive to notice a dead peer.
_RUNTIME_CHANNEL_OPTIONS = (
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_permit_without_calls", 0),
)
# How long calls still running on a replaced channel may take to finish.
_CLOSE_GRACE = 30.0


class RuntimeClient:
    """CRI RuntimeService + ImageService client; satisfies ``kubeling.cri.Runtime``."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        pull_timeout: float | None = None,
        retry_timeout: float = 30.0,
        observe: OperationObserver | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.observe = observe
        self.timeout = timeout
        self.pull_timeout = pull_timeout
        self.retry_timeout = retry_timeout
        self._channel: Any = rpc.channel(endpoint, _RUNTIME_CHANNEL_OPTIONS)
        self._calls: dict[str, Any] = {}
        self._generation = 0
        self._closing: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RuntimeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()
        await self._channel.close()

    async def reopen(self) -> None:
        """Drop the channel and dial again (e.g. after the socket was recreated).
        The old channel closes in the background with a grace period: closing it at
        once would cancel the calls other tasks still have on it, and grpc.aio
        delivers that as a CancelledError nobody asked for."""
        old = self._channel
        self._channel = rpc.channel(self.endpoint, _RUNTIME_CHANNEL_OPTIONS)
        self._calls = {}
        self._generation += 1
        task = asyncio.create_task(old.close(grace=_CLOSE_GRACE), name="cri-channel-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- plumbing --------------------------------------------------------------

    def _method(self, path: str, response: type[R]) -> Any:
        call = self._calls.get(path)
        if call is None:
            call = self._channel.unary_unary(
                path,
                request_serializer=_serialize,
                response_deserializer=response.FromString,
            )
            self._calls[path] = call
        return call

    async def _once(
        self, path: str, request: Message, response: type[R], deadline: float | None
    ) -> R:
        try:
            result: R = await self._method(path, response)(request, timeout=deadline)
        except grpc.aio.AioRpcError as exc:
            raise CRIError(exc.code(), exc.details() or "") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling() == 0:
                # Not our task's cancellation: the channel under the call was closed.
                # The runtime is as good as unreachable for this call: retry it.
                raise CRIError(
                    grpc.StatusCode.UNAVAILABLE, "call cancelled by its channel closing"
                ) from None
            raise
        return result

    async def _call(
        self,
        service: str,
        method: str,
        request: Message,
        response: type[R],
        *,
        idempotent: bool = True,
        deadline: float | _Default | None = _DEFAULT,
    ) -> R:
        """``deadline`` is seconds for the whole call; None means no deadline."""
        call = self._call_retrying(service, method, request, response, idempotent, deadline)
        if self.observe is None:
            return await call
        started = time.monotonic()
        try:
            result = await call
        except CRIError:
            self.observe(operation_type(method), time.monotonic() - started, True)
            raise
        # A cancelled call (the kubelet stopping) says nothing about the runtime.
        self.observe(operation_type(method), time.monotonic() - started, False)
        return result

    async def _call_retrying(
        self,
        service: str,
        method: str,
        request: Message,
        response: type[R],
        idempotent: bool,
        deadline: float | _Default | None,
    ) -> R:
        path = f"/{service}/{method}"
        if isinstance(deadline, _Default):
            deadline = self.timeout
        if not idempotent:
            return await self._once(path, request, response, deadline)
        retrying = AsyncRetrying(
            retry=retry_if_exception(_is_unavailable),
            wait=wait_exponential(multiplier=0.05, max=2.0) + wait_random(0, 0.05),
            stop=stop_after_delay(self.retry_timeout),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                generation = self._generation
                try:
                    return await self._once(path, request, response, deadline)
                except CRIError as exc:
                    if exc.unavailable:
                        await self._redial(generation)
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _redial(self, generation: int) -> None:
        # A channel whose runtime went away keeps the failed connection in its own
        # reconnect back-off (growing to minutes), so calls keep failing after
        # containerd is back. A fresh channel dials at once. Only the first task to
        # see the failure redials, and never a channel that is READY again.
        if generation != self._generation:
            return
        if self._channel.get_state(try_to_connect=False) != grpc.ChannelConnectivity.READY:
            await self.reopen()

    # -- RuntimeService --------------------------------------------------------

    async def version(self) -> pb.VersionResponse:
        return await self._call(
            RUNTIME_SERVICE, "Version", pb.VersionRequest(version="v1"), pb.VersionResponse
        )

    async def status(self, verbose: bool = False) -> pb.StatusResponse:
        return await self._call(
            RUNTIME_SERVICE, "Status", pb.StatusRequest(verbose=verbose), pb.StatusResponse
        )

    async def run_pod_sandbox(self, config: pb.PodSandboxConfig, runtime_handler: str = "") -> str:
        request = pb.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        reply = await self._call(
            RUNTIME_SERVICE, "RunPodSandbox", request, pb.RunPodSandboxResponse, idempotent=False
        )
        return reply.pod_sandbox_id

    async def stop_pod_sandbox(self, pod_sandbox_id: str) -> None:
        request = pb.StopPodSandboxRequest(pod_sandbox_id=pod_sandbox_id)
        await self._call(RUNTIME_SERVICE, "StopPodSandbox", request, pb.StopPodSandboxResponse)

    async def remove_pod_sandbox(self, pod_sandbox_id: str) -> None:
        request = pb.RemovePodSandboxRequest(pod_sandbox_id=pod_sandbox_id)
        await self._call(RUNTIME_SERVICE, "RemovePodSandbox", request, pb.RemovePodSandboxResponse)

    async def pod_sandbox_status(
        self, pod_sandbox_id: str, verbose: bool = False
    ) -> pb.PodSandboxStatusResponse:
        request = pb.PodSandboxStatusRequest(pod_sandbox_id=pod_sandbox_id, verbose=verbose)
        return await self._call(
            RUNTIME_SERVICE, "PodSandboxStatus", request, pb.PodSandboxStatusResponse
        )

    async def list_pod_sandbox(
        self,
        *,
        id: str = "",
        state: pb.PodSandboxState.ValueType | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[pb.PodSandbox]:
        filter = pb.PodSandboxFilter(id=id, label_selector=dict(labels or {}))
        if state is not None:
            filter.state.state = state
        reply = await self._call(
            RUNTIME_SERVICE,
            "ListPodSandbox",
            pb.ListPodSandboxRequest(filter=filter),
            pb.ListPodSandboxResponse,
        )
        return list(reply.items)

    async def create_container(
        self, pod_sandbox_id: str, config: pb.ContainerConfig, sandbox_config: pb.PodSandboxConfig
    ) -> str:
        request = pb.CreateContainerRequest(
            pod_sandbox_id=pod_sandbox_id, config=config, sandbox_config=sandbox_config
        )
        reply = await self._call(
            RUNTIME_SERVICE,
            "CreateContainer",
            request,
            pb.CreateContainerResponse,
            idempotent=False,
        )
        return reply.container_id

    async def start_container(self, container_id: str) -> None:
        request = pb.StartContainerRequest(container_id=container_id)
        await self._call(
            RUNTIME_SERVICE, "StartContainer", request, pb.StartContainerResponse, idempotent=False
        )

    async def stop_container(self, container_id: str, grace_period: int) -> None:
        request = pb.StopContainerRequest(container_id=container_id, timeout=grace_period)
        # Like kubelet: the grace period plus the usual request timeout for cleanup.
        await self._call(
            RUNTIME_SERVICE,
            "StopContainer",
            request,
            pb.StopContainerResponse,
            deadline=self.timeout + max(grace_period, 0),
        )

    async def remove_container(self, container_id: str) -> None:
        request = pb.RemoveContainerRequest(container_id=container_id)
        await self._call(RUNTIME_SERVICE, "RemoveContainer", request, pb.RemoveContainerResponse)

    async def list_containers(
        self,
        *,
        id: str = "",
        pod_sandbox_id: str = "",
        state: pb.ContainerState.ValueType | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[pb.Container]:
        filter = pb.ContainerFilter(
            id=id, pod_sandbox_id=pod_sandbox_id, label_selector=dict(labels or {})
        )
        if state is not None:
            filter.state.state = state
        reply = await self._call(
            RUNTIME_SERVICE,
            "ListContainers",
            pb.ListContainersRequest(filter=filter),
            pb.ListContainersResponse,
        )
        return list(reply.containers)

    async def container_status(
        self, container_id: str, verbose: bool = False
    ) -> pb.ContainerStatusResponse:
        request = pb.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        return await self._call(
            RUNTIME_SERVICE, "ContainerStatus", request, pb.ContainerStatusResponse
        )

    async def exec_sync(
        self, container_id: str, cmd: Sequence[str], timeout_seconds: int = 0
    ) -> ExecResult:
        request = pb.ExecSyncRequest(
            container_id=container_id, cmd=list(cmd), timeout=timeout_seconds
        )
        # Timeout 0 means "no limit" in CRI, so only then is the deadline open-ended.
        deadline = self.timeout + timeout_seconds if timeout_seconds > 0 else None
        reply = await self._call(
            RUNTIME_SERVICE,
            "ExecSync",
            request,
            pb.ExecSyncResponse,
            idempotent=False,
            deadline=deadline,
        )
        return ExecResult(reply.stdout, reply.stderr, reply.exit_code)

    async def exec(self, container_id: str, cmd: Sequence[str], *, tty: bool, stdin: bool) -> str:
        # With a tty stderr is merged into stdout (CRI refuses both together).
        request = pb.ExecRequest(
            container_id=container_id, cmd=list(cmd), tty=tty, stdin=stdin, stdout=True,
            stderr=not tty,
        )  # fmt: skip
        reply = await self._call(
            RUNTIME_SERVICE, "Exec", request, pb.ExecResponse, idempotent=False
        )
        return str(reply.url)

    async def attach(self, container_id: str, *, tty: bool, stdin: bool) -> str:
        request = pb.AttachRequest(
            container_id=container_id, tty=tty, stdin=stdin, stdout=True, stderr=not tty
        )
        reply = await self._call(
            RUNTIME_SERVICE, "Attach", request, pb.AttachResponse, idempotent=False
        )
        return str(reply.url)

    async def port_forward(self, pod_sandbox_id: str, port: int) -> str:
        request = pb.PortForwardRequest(pod_sandbox_id=pod_sandbox_id, port=[port])
        reply = await self._call(
            RUNTIME_SERVICE, "PortForward", request, pb.PortForwardResponse, idempotent=False
        )
        return str(reply.url)

    async def container_stats(self, container_id: str) -> pb.ContainerStats:
        request = pb.ContainerStatsRequest(container_id=container_id)
        reply = await self._call(
            RUNTIME_SERVICE, "ContainerStats", request, pb.ContainerStatsResponse
        )
        return reply.stats

    async def list_container_stats(
        self, *, id: str = "", pod_sandbox_id: str = "", labels: Mapping[str, str] | None = None
    ) -> list[pb.ContainerStats]:
        filter = pb.ContainerStatsFilter(
            id=id, pod_sandbox_id=pod_sandbox_id, label_selector=dict(labels or {})
        )
        reply = await self._call(
            RUNTIME_SERVICE,
            "ListContainerStats",
            pb.ListContainerStatsRequest(filter=filter),
            pb.ListContainerStatsResponse,
        )
        return list(reply.stats)

    # -- ImageService ----------------------------------------------------------

    async def image_status(self, image: str) -> pb.Image | None:
        request = pb.ImageStatusRequest(image=pb.ImageSpec(image=image))
        reply = await self._call(IMAGE_SERVICE, "ImageStatus", request, pb.ImageStatusResponse)
        # CRI answers "not present" with an unset image, not with NOT_FOUND.
        return reply.image if reply.HasField("image") else None

    async def pull_image(
        self, image: str, sandbox_config: pb.PodSandboxConfig | None = None
    ) -> str:
        request = pb.PullImageRequest(
            image=pb.ImageSpec(image=image), sandbox_config=sandbox_config
        )
        reply = await self._call(
            IMAGE_SERVICE, "PullImage", request, pb.PullImageResponse, deadline=self.pull_timeout
        )
        return reply.image_ref

    async def list_images(self, image: str = "") -> list[pb.Image]:
        filter = pb.ImageFilter(image=pb.ImageSpec(image=image)) if image else None
        reply = await self._call(
            IMAGE_SERVICE, "ListImages", pb.ListImagesRequest(filter=filter), pb.ListImagesResponse
        )
        return list(reply.images)

    async def image_fs_info(self) -> pb.ImageFsInfoResponse:
        """Where the runtime keeps images (the kubelet's imagefs)."""
        return await self._call(
            IMAGE_SERVICE, "ImageFsInfo", pb.ImageFsInfoRequest(), pb.ImageFsInfoResponse
        )

    async def remove_image(self, image: str) -> None:
        request = pb.RemoveImageRequest(image=pb.ImageSpec(image=image))
        await self._call(IMAGE_SERVICE, "RemoveImage", request, pb.RemoveImageResponse)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
