from __future__ import annotations

from collections.abc import Mapping, Sequence

from kubeling.cri.api import pb
from kubeling.cri.runtime import Runtime


def sandbox_config(
    name: str = "web",
    uid: str = "uid-1",
    namespace: str = "default",
    attempt: int = 0,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=attempt),
        hostname=name,
        log_directory=f"/var/log/pods/{namespace}_{name}_{uid}",
        labels={"io.kubernetes.pod.uid": uid, "io.kubernetes.pod.name": name, **(labels or {})},
        annotations=dict(annotations or {}),
    )


def container_config(
    name: str = "app",
    image: str = "busybox",
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    memory_limit: int = 0,
) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=image),
        args=list(args),
        envs=[pb.KeyValue(key=k, value=v) for k, v in (env or {}).items()],
        labels={"io.kubernetes.container.name": name, **(labels or {})},
        log_path=f"{name}/0.log",
        linux=pb.LinuxContainerConfig(
            resources=pb.LinuxContainerResources(memory_limit_in_bytes=memory_limit)
        ),
    )


async def start_pod(
    rt: Runtime,
    sandbox: pb.PodSandboxConfig | None = None,
    container: pb.ContainerConfig | None = None,
) -> tuple[str, str]:
    """Run a sandbox with one started container; returns (sandbox id, container id)."""
    sandbox = sandbox or sandbox_config()
    container = container or container_config()
    await rt.pull_image(container.image.image)
    sandbox_id = await rt.run_pod_sandbox(sandbox)
    container_id = await rt.create_container(sandbox_id, container, sandbox)
    await rt.start_container(container_id)
    return sandbox_id, container_id
