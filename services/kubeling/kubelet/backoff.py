"""Per-key exponential back-off, as the kubelet uses for crash loops and image pulls.

Semantics follow upstream's ``util/flowcontrol`` back-off as the kubelet drives it:
the delay starts at ``initial`` and doubles on every further failure up to
``maximum``; a container that ran for at least ``reset_after`` seconds before it
exited starts over from ``initial`` ("CrashLoopBackOff resets after 10 minutes of
running"). Unlike upstream, which infers the reset from ``2 * maximum`` of silence,
the caller may say how long the container ran (``note_exit`` or
``remaining_after_exit``), so a slow restart does not reset the back-off of a
container that only ran for a second.

Everything is measured on the injected ``clock``; timestamps passed in
(``note_start(at=...)``, ``remaining_after_exit(finished=...)``) must come from the
same clock. A kubelet that passes CRI timestamps (wall-clock) builds it with
``clock=time.time``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(slots=True)
class _Entry:
    delay: float  # the back-off that applies to the next restart
    since: float  # when that back-off window started
    touched: float  # last time anything happened to this key (for gc)
    started_at: float | None = None  # the current instance's start, if known
    # The caller told us the last run was short: double on the next step even if
    # the restart comes late (e.g. after an image pull back-off).
    short_exit: bool = False


class Backoff:
    """Exponential back-off keyed by string (the kubelet uses ``"{pod_uid}/{container}"``).

    Two ways to drive it, both upstream-compatible:

    * on each exit call ``next_delay(key)`` and restart once ``in_backoff`` is false;
      ``note_start``/``note_exit`` supply the run time for the reset rule;
    * or, as the kubelet's sync loop does, ``remaining_after_exit(key, finished,
      ran_for)`` to decide whether to wait, then ``step(key)`` when restarting: the
      first restart is then immediate and later ones wait initial, 2x, 4x, ...
    """

    def __init__(
        self,
        initial: float = 10.0,
        maximum: float = 300.0,
        reset_after: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if initial <= 0:
            raise ValueError(f"initial back-off must be positive, got {initial}")
        if maximum < initial:
            raise ValueError(f"maximum back-off {maximum} is below initial {initial}")
        if reset_after < 0:
            raise ValueError(f"reset_after must not be negative, got {reset_after}")
        self.initial = initial
        self.maximum = maximum
        self.reset_after = reset_after
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    # -- stepping ----------------------------------------------------------------

    def next_delay(self, key: str) -> float:
        """Record a failure now and return the back-off it earns.

        ``initial`` for a new (or reset) key, then double the previous, capped.
        """
        now = self._clock()
        entry = self._entries.get(key)
        if (
            entry is None
            or entry.delay <= 0  # only note_start so far: this is the first failure
            or (not entry.short_exit and self._ran_long(entry, now))
        ):
            delay = self.initial
        else:
            delay = min(entry.delay * 2, self.maximum)
        self._entries[key] = _Entry(delay=delay, since=now, touched=now)
        return delay

    def step(self, key: str) -> float:
        """Alias of ``next_delay`` for the sync loop's step-at-restart style."""
        return self.next_delay(key)

    def note_start(self, key: str, at: float | None = None) -> None:
        """The key's container started (at ``at``, default now)."""
        now = self._clock()
        started = now if at is None else at
        entry = self._entries.get(key)
        if entry is None:
            # Nothing to back off from yet, but remember the start so a later
            # next_delay without note_exit can still apply the reset rule.
            entry = self._entries[key] = _Entry(delay=0.0, since=started, touched=now)
        entry.started_at = started
        entry.short_exit = False
        entry.touched = now

    def note_exit(self, key: str, ran_for: float | None = None) -> None:
        """The key's container exited after running ``ran_for`` seconds.

        Without ``ran_for`` it is measured from ``note_start``. A run of at least
        ``reset_after`` wipes the back-off, so the next failure earns ``initial``.
        """
        now = self._clock()
        entry = self._entries.get(key)
        if entry is None:
            return
        if ran_for is None:
            if entry.started_at is None:
                entry.touched = now
                return
            ran_for = now - entry.started_at
        if ran_for >= self.reset_after:
            del self._entries[key]
            return
        entry.short_exit = True
        entry.started_at = None
        entry.touched = now

    def remaining_after_exit(self, key: str, finished: float, ran_for: float) -> float:
        """Seconds to wait before restarting a container that exited at ``finished``.

        The current back-off counts from the exit, as upstream's
        ``IsInBackOffSince(key, finishedAt)``; a long run resets it (0: restart now).
        Idempotent, so the sync loop may ask again on every pass.
        """
        self.note_exit(key, ran_for)
        entry = self._entries.get(key)
        if entry is None or entry.delay <= 0:
            return 0.0
        entry.since = finished
        return max(0.0, finished + entry.delay - self._clock())

    # -- queries -----------------------------------------------------------------

    def current(self, key: str) -> float:
        """The back-off the key is serving (or would serve next); 0 when none."""
        entry = self._entries.get(key)
        return entry.delay if entry is not None else 0.0

    def remaining(self, key: str, now: float | None = None) -> float:
        """Seconds until the key's back-off window ends; 0 when it is not backing off."""
        entry = self._entries.get(key)
        if entry is None:
            return 0.0
        now = self._clock() if now is None else now
        return max(0.0, entry.since + entry.delay - now)

    def in_backoff(self, key: str, now: float | None = None) -> bool:
        return self.remaining(key, now) > 0

    # -- cleanup -----------------------------------------------------------------

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)

    def forget_prefix(self, prefix: str) -> None:
        """Drop every key starting with ``prefix`` (e.g. all containers of a pod)."""
        for key in [k for k in self._entries if k.startswith(prefix)]:
            del self._entries[key]

    def gc(self, now: float | None = None) -> int:
        """Drop keys idle for so long that their back-off would reset anyway.

        Returns how many were dropped. Idle means: the window is over and nothing
        happened for ``reset_after`` beyond it (upstream uses ``2 * maximum``).
        """
        now = self._clock() if now is None else now
        stale = [
            key
            for key, entry in self._entries.items()
            if now - entry.touched >= entry.delay + self.reset_after
            and now >= entry.since + entry.delay
        ]
        for key in stale:
            del self._entries[key]
        return len(stale)

    def _ran_long(self, entry: _Entry, now: float) -> bool:
        # Without an explicit exit report, infer the run time: from the known
        # start, or else assume the restart happened when the window ended.
        if entry.started_at is not None:
            return now - entry.started_at >= self.reset_after
        return now - entry.since >= entry.delay + self.reset_after
