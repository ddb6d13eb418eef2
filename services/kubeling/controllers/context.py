"""What every controller (and the scheduler) is built from: the API client, an
event recorder and the settings. Kept apart from the manager so the scheduler can
use it without importing the controllers, and the master can register the
scheduler without the controllers importing the scheduler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from kubeling.client import Client
from kubeling.client.events import EventRecorder


@dataclass
class ControllerSettings:
    """Timings and sizes the controllers use; tests set short values."""

    workers: int = 4
    # Node lifecycle: a node whose Lease is older than this is NotReady/Unknown.
    node_monitor_grace_period: float = 50.0
    node_monitor_period: float = 5.0
    # Default tolerationSeconds for the not-ready/unreachable NoExecute taints.
    pod_eviction_timeout: float = 300.0
    # Node IPAM: pod CIDRs for Nodes are cut from this range ("" = none allocated,
    # as Kubernetes' --allocate-node-cidrs=false), one subnet of this prefix each.
    cluster_cidr: str = ""
    node_cidr_mask_size: int = 24
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class ControllerContext:
    api: Client
    recorder: EventRecorder
    settings: ControllerSettings


class Controller(Protocol):
    async def run(self) -> None: ...
