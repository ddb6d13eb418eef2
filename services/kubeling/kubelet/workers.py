"""One worker per pod uid that always acts on the latest desired state.

`update(uid)` wakes the pod's worker (starting it if needed); many updates while a
sync runs collapse into one more sync, which reads the newest spec and runtime
state then. A sync may ask to run again after a delay (back-off, retries).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from kubeling.kubelet.sync import SyncResult

log = structlog.get_logger(__name__)

SyncFn = Callable[[str], Awaitable[SyncResult]]

_ERROR_RETRY = 2.0


class _Worker:
    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class PodWorkers:
    def __init__(self, sync: SyncFn) -> None:
        self._sync = sync
        self._workers: dict[str, _Worker] = {}

    def update(self, uid: str) -> None:
        worker = self._workers.get(uid)
        if worker is None:
            worker = self._workers[uid] = _Worker()
            worker.task = asyncio.get_running_loop().create_task(
                self._run(uid, worker), name=f"pod-worker-{uid}"
            )
        worker.wake.set()

    def active(self) -> set[str]:
        return set(self._workers)

    async def _run(self, uid: str, worker: _Worker) -> None:
        delay: float | None = None
        try:
            while True:
                if delay is None:
                    await worker.wake.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(worker.wake.wait(), delay)
                worker.wake.clear()
                try:
                    result = await self._sync(uid)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("pod sync failed; retrying", uid=uid)
                    delay = _ERROR_RETRY
                    continue
                if result.done and not worker.wake.is_set():
                    return
                delay = result.retry_after
        finally:
            if self._workers.get(uid) is worker:
                del self._workers[uid]

    async def close(self) -> None:
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()
