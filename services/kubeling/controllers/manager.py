"""Run the enabled controllers (and the scheduler) against a master.

Each controller is a class taking `ControllerContext` with an async `run()`; the
`REGISTRY` maps its name (as given to `kubeling-master --controllers`) to its
factory. Controllers share one API client and one event recorder. Loops that live
elsewhere (the scheduler, registered by the master) are passed in as `extra`, so
this package never imports them.

Each controller runs as its own supervised loop (common/supervisor.py): a crash
restarts that controller alone, from a fresh instance (its informers list again),
after a back-off; its informers' watch loops are supervised too. A controller that
keeps crashing gives up, which makes the whole process unhealthy.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from kubeling.client import Client
from kubeling.client.events import EventRecorder
from kubeling.client.informer import supervised_informers
from kubeling.common.supervisor import LoopFactory, LoopFailed, Supervisor
from kubeling.common.tls import Credentials
from kubeling.controllers.context import Controller, ControllerContext, ControllerSettings

__all__ = [
    "REGISTRY",
    "Controller",
    "ControllerContext",
    "ControllerFactory",
    "ControllerSettings",
    "load_all",
    "register",
    "run_controllers",
]

log = structlog.get_logger(__name__)

ControllerFactory = Callable[[ControllerContext], Controller]

REGISTRY: dict[str, ControllerFactory] = {}


def register(name: str) -> Callable[[ControllerFactory], ControllerFactory]:
    """Class decorator adding a controller to the registry under `name`."""

    def add(factory: ControllerFactory) -> ControllerFactory:
        REGISTRY[name] = factory
        return factory

    return add


def load_all() -> None:
    """Import every controller module so its @register runs."""
    import importlib
    import pkgutil

    import kubeling.controllers as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in ("manager", "context", "leaderelection"):
            importlib.import_module(f"kubeling.controllers.{module.name}")


async def run_controllers(
    address: str,
    enabled: set[str],
    settings: ControllerSettings | None = None,
    *,
    supervisor: Supervisor | None = None,
    extra: dict[str, ControllerFactory] | None = None,
    credentials: Credentials | None = None,
) -> None:
    """Run the enabled controllers ("*" enables all) until cancelled, each under
    `supervisor` (a private one when None). `extra`: more loops by name (the
    scheduler). `credentials`: TLS to the API (None: a plaintext master). Raises
    `LoopFailed` when one of them gives up."""
    load_all()
    factories = {**REGISTRY, **(extra or {})}
    names = sorted(factories) if "*" in enabled else sorted(n for n in enabled if n in factories)
    unknown = sorted(n for n in enabled if n != "*" and n not in factories)
    if unknown:
        log.warning("unknown controllers ignored", names=unknown, known=sorted(factories))
    supervisor = supervisor or Supervisor("kubeling-controller-manager")
    async with Client(address, credentials=credentials) as api:
        context = ControllerContext(api, EventRecorder(api, "kubeling-controller-manager"),
                                    settings or ControllerSettings())  # fmt: skip

        def loop(name: str) -> LoopFactory:
            # A fresh controller per (re)start: its caches and queue are rebuilt.
            return lambda: factories[name](context).run()

        # Informers started inside a controller are supervised by the same supervisor.
        with supervised_informers(supervisor):
            tasks = [
                asyncio.create_task(supervisor.supervise(n, loop(n)), name=f"controller-{n}")
                for n in names
            ]
        log.info("controllers running", names=names)
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, LoopFailed):
                    await task
            await context.recorder.flush()
