"""What the kubelet's API server needs to know about the pods it runs.

The kubelet core implements `PodDirectory`; the gRPC service (logs, exec, stats)
depends only on this Protocol and on the CRI `Runtime` Protocol, so each side is
tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from kubeling.v1 import core_pb2


@dataclass(frozen=True)
class ContainerRef:
    """A container instance of a pod as the runtime knows it."""

    container_id: str
    name: str
    log_path: str  # the CRI log file (containerd writes "TIME STREAM TAG text" lines)
    running: bool


class PodDirectory(Protocol):
    node_name: str

    def pods(self) -> list[core_pb2.Pod]:
        """Pods bound to this node, with the status the kubelet last computed."""
        ...

    def find_pod(self, namespace: str, name: str) -> core_pb2.Pod | None: ...

    def find_container(
        self, namespace: str, name: str, container: str, previous: bool = False
    ) -> ContainerRef | None:
        """The current (or, with previous, the last exited) instance of a container;
        an empty container name means the pod's only container."""
        ...
