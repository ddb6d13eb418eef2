"""Run the enabled controllers (and the scheduler) against a master.

Each controller is a class taking `ControllerContext` with an async `run()`; the
`REGISTRY` maps its name (as given to `kubeling-master --controllers`) to its
factory. Controllers share one API client and one event recorder.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from kubeling.client import Client
from kubeling.client.events import EventRecorder

log = structlog.get_logger(__name__)


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


REGISTRY: dict[str, Callable[[ControllerContext], Controller]] = {}


def register(
    name: str,
) -> Callable[
    [Callable[[ControllerContext], Controller]], Callable[[ControllerContext], Controller]
]:
    """Class decorator adding a controller to the registry under `name`."""

    def add(
        factory: Callable[[ControllerContext], Controller],
    ) -> Callable[[ControllerContext], Controller]:
        REGISTRY[name] = factory
        return factory

    return add


def load_all() -> None:
    """Import every controller module so its @register runs."""
    import importlib
    import pkgutil

    import kubeling.controllers as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in ("manager",):
            importlib.import_module(f"kubeling.controllers.{module.name}")


async def run_controllers(
    address: str, enabled: set[str], settings: ControllerSettings | None = None
) -> None:
    """Run the enabled controllers ("*" enables all) until cancelled."""
    load_all()
    names = sorted(REGISTRY) if "*" in enabled else sorted(n for n in enabled if n in REGISTRY)
    unknown = sorted(n for n in enabled if n != "*" and n not in REGISTRY)
    if unknown:
        log.warning("unknown controllers ignored", names=unknown, known=sorted(REGISTRY))
    async with Client(address) as api:
        context = ControllerContext(api, EventRecorder(api, "kubeling-controller-manager"),
                                    settings or ControllerSettings())  # fmt: skip
        tasks = [
            asyncio.create_task(REGISTRY[name](context).run(), name=f"controller-{name}")
            for name in names
        ]
        log.info("controllers running", names=names)
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await context.recorder.flush()
