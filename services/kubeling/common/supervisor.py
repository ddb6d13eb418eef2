"""One small supervisor for every long-running loop of a process.

A loop is a coroutine factory: each (re)start calls it for a fresh coroutine, so a
loop rebuilds its state on restart (an informer lists again, a sync loop resyncs).
When a loop raises, the supervisor logs the traceback, counts the crash
(`kubeling_loop_crashes_total{loop}`), waits an exponential back-off and starts it
again. A loop that crashes `max_crashes` times within `window` seconds cannot
recover: the supervisor gives up, `failed` is set, and the process's main turns its
health to NOT_SERVING and exits non-zero (`lifecycle.until_terminated`), so systemd
or the lab restarts it. A loop that returns on its own is finished, not restarted.

    supervisor = Supervisor("kubelet")
    supervisor.start("relist", kubelet.relist_forever)
    code = await until_terminated(supervisor)   # 0 on SIGTERM, 1 when a loop gave up

Tests reach a running loop with `inject_crash(name)`: the loop's current run is
interrupted and handled exactly like a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from prometheus_client import Counter, Gauge

log = structlog.get_logger(__name__)

# A cancelled loop that has not ended after this long is cancelled again: code that
# consumed one cancellation (an RPC error retried at the moment of the cancel) must
# not keep its supervisor, and so a whole process's stop, waiting forever.
CANCEL_GRACE = 5.0

LOOP_CRASHES = Counter(
    "kubeling_loop_crashes_total", "Crashes of supervised loops (each one restarted)", ["loop"]
)
LOOP_UP = Gauge(
    "kubeling_loop_running", "1 while a supervised loop runs, 0 while it waits", ["loop"]
)
LOOP_GAVE_UP = Counter(
    "kubeling_loop_failures_total", "Supervised loops that crashed too often and gave up", ["loop"]
)

LoopFactory = Callable[[], Awaitable[None]]


class LoopFailed(Exception):
    """A supervised loop crashed too often to go on."""

    def __init__(self, loop: str, cause: BaseException) -> None:
        super().__init__(f"loop {loop} crashed too often; last error: {cause!r}")
        self.loop = loop
        self.cause = cause


class _InjectedCrash(Exception):
    """Raised in place of a loop's cancellation by `inject_crash`."""


class _StrayCancellation(Exception):
    """A loop ended with CancelledError although its supervisor was not cancelled."""


@dataclass
class _LoopState:
    crashes: deque[float] = field(default_factory=deque)
    restarts: int = 0
    task: asyncio.Future[None] | None = None  # the loop's current run
    supervising: asyncio.Task[object] | None = None  # the task awaiting it
    inject: bool = False


class Supervisor:
    def __init__(
        self,
        component: str,
        *,
        initial_backoff: float = 0.2,
        max_backoff: float = 30.0,
        max_crashes: int = 10,
        window: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.component = component
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.max_crashes = max_crashes
        self.window = window
        self._clock = clock
        self._loops: dict[str, _LoopState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.failed = asyncio.Event()
        self.failure: LoopFailed | None = None
        self._on_failure: list[Callable[[LoopFailed], None]] = []

    def on_failure(self, callback: Callable[[LoopFailed], None]) -> None:
        """Call `callback` once when a loop gives up (e.g. to turn health NOT_SERVING)."""
        self._on_failure.append(callback)

    def restarts(self, name: str) -> int:
        """How many times loop `name` has been restarted after a crash."""
        state = self._loops.get(name)
        return state.restarts if state is not None else 0

    def start(self, name: str, factory: LoopFactory) -> asyncio.Task[None]:
        """Run `factory` supervised in a task of its own, until it returns, gives up
        (the task then ends with `LoopFailed`) or `stop()`."""
        if name in self._tasks and not self._tasks[name].done():
            raise ValueError(f"loop {name} is already running")
        task = asyncio.create_task(self.supervise(name, factory), name=f"loop-{name}")
        self._tasks[name] = task
        return task

    async def supervise(self, name: str, factory: LoopFactory) -> None:
        """Run `factory` supervised in the current task (e.g. inside other work such as
        leader election, whose cancellation then ends it). Raises `LoopFailed` when the
        loop gives up."""
        state = self._loops.setdefault(name, _LoopState())
        backoff = self.initial_backoff
        while True:
            started = self._clock()
            try:
                await self._run_once(name, state, factory)
                log.info("loop finished", component=self.component, loop=name)
                return
            except Exception as exc:  # the loop crashed: count, back off, restart
                error: BaseException = exc
            LOOP_CRASHES.labels(name).inc()
            now = self._clock()
            state.crashes.append(now)
            while state.crashes and state.crashes[0] < now - self.window:
                state.crashes.popleft()
            if len(state.crashes) >= self.max_crashes:
                failure = LoopFailed(name, error)
                self._give_up(failure, error)
                raise failure
            # A run that lasted a while starts the back-off over.
            if now - started > max(self.max_backoff, 10.0):
                backoff = self.initial_backoff
            log.error(
                "loop crashed; restarting",
                component=self.component,
                loop=name,
                backoff=round(backoff, 3),
                exc_info=error,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)
            state.restarts += 1

    async def _run_once(self, name: str, state: _LoopState, factory: LoopFactory) -> None:
        LOOP_UP.labels(name).set(1)
        run = asyncio.ensure_future(factory())
        state.task = run
        state.supervising = asyncio.current_task()
        try:
            # Shielded so that `inject_crash` can interrupt the wait without the
            # cancellation reaching the loop's own code first.
            await asyncio.shield(run)
        except asyncio.CancelledError:
            injected = state.inject
            state.inject = False
            run.cancel()
            await _until_ended(run, name)
            current = asyncio.current_task()
            if injected and current is not None and current.uncancel() == 0:
                raise _InjectedCrash("crash injected by a test") from None
            if current is not None and current.cancelling() == 0:
                # Nobody cancelled us: the loop's own code raised CancelledError (a
                # closed grpc.aio channel does that to its pending calls). That is a
                # crash, not a stop; left as it is, the loop would end silently.
                raise _StrayCancellation("the loop raised CancelledError") from None
            raise
        finally:
            state.task = None
            LOOP_UP.labels(name).set(0)

    def inject_crash(self, name: str) -> None:
        """Interrupt loop `name`'s current run as if it had raised (for tests)."""
        state = self._loops.get(name)
        if state is None or state.task is None or state.supervising is None:
            raise LookupError(f"loop {name} is not running")
        state.inject = True
        state.supervising.cancel()

    def _give_up(self, failure: LoopFailed, error: BaseException) -> None:
        LOOP_GAVE_UP.labels(failure.loop).inc()
        log.critical(
            "loop crashed too often; giving up",
            component=self.component,
            loop=failure.loop,
            crashes=self.max_crashes,
            window=self.window,
            exc_info=error,
        )
        if self.failure is None:
            self.failure = failure
            self.failed.set()
            for callback in self._on_failure:
                callback(failure)

    async def stop(self) -> None:
        """Cancel every loop started with `start` and wait for them to end."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, LoopFailed):
                await task
        self._tasks.clear()


async def _until_ended(run: asyncio.Future[None], name: str) -> None:
    """Wait for a cancelled loop to end, cancelling it again every CANCEL_GRACE
    seconds while it goes on. Our own cancellation meanwhile does not cut the wait
    short (the caller checks `cancelling()` afterwards), as awaiting it would not."""
    while not run.done():
        try:
            await asyncio.wait({run}, timeout=CANCEL_GRACE)
        except asyncio.CancelledError:
            continue
        if not run.done():
            log.error("loop did not end when cancelled; cancelling it again", loop=name)
            run.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        run.result()
