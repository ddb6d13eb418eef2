"""How every kubeling process ends: on SIGTERM (systemd, the lab, tests) or SIGINT."""

from __future__ import annotations

import asyncio
import signal


async def until_terminated() -> None:
    """Return once the process gets SIGTERM or SIGINT (its stop work follows)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
