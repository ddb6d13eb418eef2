"""The narrow container-runtime interface the kubelet's loops depend on.

Both the gRPC ``RuntimeClient`` and the in-process ``FakeRuntime`` satisfy it, so
hollow nodes can run the real kubelet logic without any sockets. Errors are raised
as ``CRIError`` with the gRPC status code a real runtime would use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

from kubeling.cri.api import pb


class ExecResult(NamedTuple):
    stdout: bytes
    stderr: bytes
    exit_code: int


class Runtime(Protocol):
    # -- RuntimeService --------------------------------------------------------
    async def version(self) -> pb.VersionResponse: ...

    async def status(self, verbose: bool = False) -> pb.StatusResponse: ...

    async def run_pod_sandbox(
        self, config: pb.PodSandboxConfig, runtime_handler: str = ""
    ) -> str: ...

    async def stop_pod_sandbox(self, pod_sandbox_id: str) -> None: ...

    async def remove_pod_sandbox(self, pod_sandbox_id: str) -> None: ...

    async def pod_sandbox_status(
        self, pod_sandbox_id: str, verbose: bool = False
    ) -> pb.PodSandboxStatusResponse: ...

    async def list_pod_sandbox(
        self,
        *,
        id: str = "",
        state: pb.PodSandboxState.ValueType | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[pb.PodSandbox]: ...

    async def create_container(
        self, pod_sandbox_id: str, config: pb.ContainerConfig, sandbox_config: pb.PodSandboxConfig
    ) -> str: ...

    async def start_container(self, container_id: str) -> None: ...

    async def stop_container(self, container_id: str, grace_period: int) -> None: ...

    async def remove_container(self, container_id: str) -> None: ...

    async def list_containers(
        self,
        *,
        id: str = "",
        pod_sandbox_id: str = "",
        state: pb.ContainerState.ValueType | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[pb.Container]: ...

    async def container_status(
        self, container_id: str, verbose: bool = False
    ) -> pb.ContainerStatusResponse: ...

    async def exec_sync(
        self, container_id: str, cmd: Sequence[str], timeout_seconds: int = 0
    ) -> ExecResult: ...

    # Streaming: each returns the URL of the runtime's streaming server for one
    # session (see kubeling.cri.streaming for the protocol spoken there).
    async def exec(
        self, container_id: str, cmd: Sequence[str], *, tty: bool, stdin: bool
    ) -> str: ...

    async def attach(self, container_id: str, *, tty: bool, stdin: bool) -> str: ...

    async def port_forward(self, pod_sandbox_id: str, port: int) -> str: ...

    async def container_stats(self, container_id: str) -> pb.ContainerStats: ...

    async def list_container_stats(
        self, *, id: str = "", pod_sandbox_id: str = "", labels: Mapping[str, str] | None = None
    ) -> list[pb.ContainerStats]: ...

    # -- ImageService ----------------------------------------------------------
    async def image_status(self, image: str) -> pb.Image | None: ...

    async def pull_image(
        self, image: str, sandbox_config: pb.PodSandboxConfig | None = None
    ) -> str: ...

    async def list_images(self, image: str = "") -> list[pb.Image]: ...

    async def remove_image(self, image: str) -> None: ...
