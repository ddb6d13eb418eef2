"""One worker per pod uid that always acts on the latest desired state, with an
explicit life cycle as upstream's pod_workers.go: syncing → terminating →
terminated.

`update(uid)` wakes the pod's worker (making it if needed); many updates while a
sync runs collapse into one more sync, which reads the newest spec and runtime
state then. A sync may ask to run again after a delay (back-off, retries).

`grace_of(uid)` tells whether the pod is to be stopped and with which grace period
(None: it should run). Once a pod is to be stopped its worker is terminating for
good; its syncs are kills. An update that makes a running pod terminating, or that
shortens the grace period of the kill in flight (a second delete with a shorter
grace, a force delete), interrupts the sync in flight so the kill starts over with
the new grace at once. When a kill's sync says the pod is done the worker is
terminated and forgotten.

The workers' tasks live in `run()`, the dispatch loop a supervisor runs: if it
crashes or is restarted, every worker is started again and syncs at once (a sync
only reads the spec and the runtime, so nothing is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable

import structlog

from kubeling.kubelet.steps import SyncResult

log = structlog.get_logger(__name__)

SyncFn = Callable[[str], Awaitable[SyncResult]]
GraceFn = Callable[[str], int | None]

_ERROR_RETRY = 2.0


class PodState(enum.Enum):
    SYNCING = "syncing"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


class _Worker:
    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.state = PodState.SYNCING
        self.sync: asyncio.Task[SyncResult] | None = None  # the sync in flight
        self.sync_grace: int | None = None  # the grace of the kill in flight
        self.interrupted = False


class PodWorkers:
    def __init__(self, sync: SyncFn, grace_of: GraceFn = lambda uid: None) -> None:
        self._sync = sync
        self._grace_of = grace_of
        self._workers: dict[str, _Worker] = {}
        self._group: asyncio.TaskGroup | None = None

    def update(self, uid: str) -> None:
        worker = self._workers.get(uid)
        if worker is None:
            worker = self._workers[uid] = _Worker()
        grace = self._grace_of(uid)
        if grace is not None and worker.state is not PodState.TERMINATED:
            became = worker.state is PodState.SYNCING
            worker.state = PodState.TERMINATING
            shorter = worker.sync_grace is not None and grace < worker.sync_grace
            if (became or shorter) and worker.sync is not None and not worker.sync.done():
                log.info("pod sync interrupted to stop the pod", uid=uid, grace=grace)
                worker.interrupted = True
                worker.sync.cancel()
        worker.wake.set()
        self._spawn(uid, worker)

    def state(self, uid: str) -> PodState | None:
        worker = self._workers.get(uid)
        return worker.state if worker is not None else None

    def pending(self, uid: str) -> bool:
        """Whether an update waits for the pod's next sync."""
        worker = self._workers.get(uid)
        return worker is not None and worker.wake.is_set()

    def active(self) -> set[str]:
        return set(self._workers)

    async def run(self) -> None:
        """Run the workers until cancelled; a worker's crash ends this (its
        supervisor restarts it, and with it every worker)."""
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                for uid, worker in list(self._workers.items()):
                    worker.wake.set()  # resume at once: a sync may have been cut off
                    self._spawn(uid, worker)
                await asyncio.Event().wait()
            finally:
                self._group = None

    def _spawn(self, uid: str, worker: _Worker) -> None:
        if self._group is not None and worker.task is None:
            worker.task = self._group.create_task(self._run(uid, worker), name=f"pod-worker-{uid}")

    async def _run(self, uid: str, worker: _Worker) -> None:
        delay: float | None = 0.0 if worker.wake.is_set() else None
        try:
            while True:
                if delay is None:
                    await worker.wake.wait()
                else:
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
                    # cancellation that arrives as the wait ends.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await worker.wake.wait()
                worker.wake.clear()
                worker.interrupted = False
                worker.sync_grace = self._grace_of(uid)
                if worker.sync_grace is not None:
                    worker.state = PodState.TERMINATING
                worker.sync = asyncio.ensure_future(self._sync(uid))
                try:
                    result = await worker.sync
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is None or task.cancelling():
                        raise  # the worker itself is being stopped
                    if worker.interrupted:
                        delay = 0.0  # cut short by update(): sync again now
                        continue
                    # The sync raised CancelledError on its own (a grpc.aio channel
                    # closed under a call does that): a failure to retry, or the
                    # worker would end with nothing left to wake it.
                    log.error("pod sync cancelled from inside; retrying", uid=uid)
                    delay = _ERROR_RETRY
                    continue
                except Exception:
                    log.exception("pod sync failed; retrying", uid=uid)
                    delay = _ERROR_RETRY
                    continue
                finally:
                    worker.sync = None
                    worker.sync_grace = None
                if result.done and not worker.wake.is_set():
                    worker.state = PodState.TERMINATED
                    if self._workers.get(uid) is worker:
                        del self._workers[uid]
                    return
                delay = result.retry_after
        finally:
            # Cancelled with the dispatch loop: the next run() starts it again.
            worker.task = None
