"""A master inside the test's own event loop, on a free loopback port, and a client
for it. The client's `target` is the master's address (for the CLI, or kubelets)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from kubeling.client import Client
from kubeling.controllers.manager import ControllerSettings
from kubeling.master.server import Master, MasterConfig


@contextlib.asynccontextmanager
async def serving(master: Master, client_timeout: float | None = 10.0) -> AsyncIterator[Client]:
    """Start `master` (built by the caller, who may wire things in first) and yield a
    client for it; close the client and stop the master on the way out."""
    port = await master.start()
    api = Client(f"127.0.0.1:{port}", timeout=client_timeout)
    try:
        yield api
    finally:
        await api.close()
        await master.stop()


@contextlib.asynccontextmanager
async def in_process_master(
    data_dir: Path,
    controllers: Iterable[str] = (),
    settings: ControllerSettings | None = None,
    *,
    client_timeout: float | None = 10.0,
    **config: Any,
) -> AsyncIterator[Client]:
    """A master running just `controllers` ("*" for all; none by default) with
    `settings`; `config`: further MasterConfig fields (bookmark_interval, ...).
    Plaintext on loopback unless `tls=True` is passed (tests/integration/test_tls_*
    make their own TLS clients)."""
    config.setdefault("tls", False)
    master = Master(
        MasterConfig(
            listen="127.0.0.1:0",
            data_dir=data_dir,
            controllers=set(controllers),
            controller_settings=settings or ControllerSettings(),
            **config,
        )
    )
    async with serving(master, client_timeout) as api:
        yield api


@contextlib.asynccontextmanager
async def tls_master(data_dir: Path, **config: Any) -> AsyncIterator[tuple[Master, Client]]:
    """A master serving mutual TLS on 127.0.0.1 with a join port (no controllers
    unless `config` says), and a client with its admin.conf."""
    config.setdefault("controllers", set())
    master = Master(
        MasterConfig(listen="127.0.0.1:0", join_listen="127.0.0.1:0", data_dir=data_dir, **config)
    )
    async with serving(master) as plain:
        await plain.close()
        async with Client.from_config(master.admin_conf, timeout=10) as admin:
            yield master, admin
