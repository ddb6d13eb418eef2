"""How every kubeling process ends: on SIGTERM (systemd, the lab, tests) or SIGINT,
or when one of its supervised loops gave up (common/supervisor.py)."""

from __future__ import annotations

import asyncio
import signal

from kubeling.common.supervisor import Supervisor

# The exit status of a process whose loop could not recover: systemd restarts it.
EXIT_LOOP_FAILED = 1


async def until_terminated(supervisor: Supervisor | None = None) -> int:
    """Return once the process gets SIGTERM or SIGINT (0) or, with a supervisor, once a
    loop gave up (EXIT_LOOP_FAILED); the process's stop work follows, then it exits
    with the returned status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waits = [asyncio.ensure_future(stop.wait())]
    if supervisor is not None:
        waits.append(asyncio.ensure_future(supervisor.failed.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    if supervisor is not None and supervisor.failed.is_set():
        return EXIT_LOOP_FAILED
    return 0
