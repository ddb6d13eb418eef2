"""The fake's gRPC adapter: CRI's RuntimeService and ImageService (same wire paths as
containerd) over a ``FakeRuntime``, for tests of ``RuntimeClient`` and for running a
real kubelet process against the fake."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from kubeling.common import rpc
from kubeling.cri.api import IMAGE_SERVICE, RUNTIME_SERVICE, pb
from kubeling.cri.errors import CRIError
from kubeling.cri.fake.runtime import FakeRuntime

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
