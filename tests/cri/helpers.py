from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kubeling.cri.api import pb
from kubeling.cri.fake import FakeRuntime
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


# -- the contract suite ----------------------------------------------------------------

# A container that runs until stopped and exits 143 on SIGTERM, as most programs do.
# (A shell as PID 1 ignores SIGTERM unless it traps it.) The fake, given no FAKE_*
# settings, behaves the same.
RUN_UNTIL_STOPPED = ("sh", "-c", "trap 'exit 143' TERM; sleep 3600 & wait")


@dataclass
class Target:
    """One runtime the contract suite runs against, and what its configs need."""

    name: str  # fake-grpc, fake-inproc or containerd
    runtime: Runtime
    pod_cidr: str
    log_root: Path
    cgroup_parent: str = ""
    image: str = "busybox"  # present from the start
    fake: FakeRuntime | None = None  # the fake behind `runtime`, if it is one

    @property
    def real(self) -> bool:
        return self.name == "containerd"

    def registry_lacks(self, image: str) -> None:
        """Pulling `image` fails from now on (containerd here has no registry at all)."""
        if self.fake is not None:
            self.fake.add_missing_image(image)

    def sandbox(
        self,
        name: str = "web",
        uid: str = "uid-1",
        namespace: str = "default",
        attempt: int = 0,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
    ) -> pb.PodSandboxConfig:
        config = sandbox_config(name, uid, namespace, attempt, labels, annotations)
        config.log_directory = str(self.log_root / f"{namespace}_{name}_{uid}")
        Path(config.log_directory).mkdir(parents=True, exist_ok=True)
        if self.cgroup_parent:
            config.linux.cgroup_parent = self.cgroup_parent
        return config

    def container(
        self,
        name: str = "app",
        command: Sequence[str] = RUN_UNTIL_STOPPED,
        env: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> pb.ContainerConfig:
        config = container_config(name, self.image, env=env, labels=labels)
        config.command.extend(command)
        return config

    def exiting(self, name: str, code: int) -> pb.ContainerConfig:
        """A container that exits by itself with `code`: a shell for containerd, the
        behaviour language for the fake."""
        env = {"FAKE_RUN_FOR": "0", "FAKE_EXIT_CODE": str(code)}
        return self.container(name, ("sh", "-c", f"exit {code}"), env=env)

    async def start_pod(
        self,
        sandbox: pb.PodSandboxConfig | None = None,
        container: pb.ContainerConfig | None = None,
    ) -> tuple[str, str]:
        """Run a sandbox with one started container; (sandbox id, container id)."""
        sandbox = sandbox or self.sandbox()
        container = container or self.container()
        sandbox_id = await self.runtime.run_pod_sandbox(sandbox)
        container_id = await self.runtime.create_container(sandbox_id, container, sandbox)
        await self.runtime.start_container(container_id)
        return sandbox_id, container_id
