"""Crash-loop back-off: doubling, the cap, the reset after a long run, gc."""

from __future__ import annotations

import pytest

from kubeling.kubelet.backoff import Backoff


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, **kwargs: float) -> Backoff:
    return Backoff(clock=clock, **kwargs)


def test_doubles_from_initial_to_maximum() -> None:
    clock = Clock()
    backoff = make(clock)
    delays = []
    for _ in range(7):
        delays.append(backoff.next_delay("p/c"))
        clock.now += 1  # crashes again right after each restart
    assert delays == [10, 20, 40, 80, 160, 300, 300]


def test_in_backoff_and_remaining_follow_the_window() -> None:
    clock = Clock()
    backoff = make(clock, initial=2.0, maximum=8.0)
    assert not backoff.in_backoff("k")
    assert backoff.remaining("k") == 0.0
    assert backoff.next_delay("k") == 2.0
    assert backoff.in_backoff("k")
    clock.now += 0.5
    assert backoff.remaining("k") == pytest.approx(1.5)
    assert backoff.in_backoff("k", now=clock.now + 1.4)
    assert not backoff.in_backoff("k", now=clock.now + 1.5)
    clock.now += 1.5
    assert not backoff.in_backoff("k")
    assert backoff.current("k") == 2.0


def test_keys_are_independent() -> None:
    clock = Clock()
    backoff = make(clock)
    backoff.next_delay("a")
    backoff.next_delay("a")
    assert backoff.next_delay("b") == 10
    assert backoff.current("a") == 20


def test_a_long_run_resets_to_initial() -> None:
    clock = Clock()
    backoff = make(clock, initial=1.0, maximum=60.0, reset_after=30.0)
    for _ in range(4):
        backoff.next_delay("k")
    assert backoff.current("k") == 8.0
    backoff.note_start("k")
    clock.now += 31
    backoff.note_exit("k", ran_for=31.0)
    assert backoff.next_delay("k") == 1.0


def test_a_short_run_keeps_doubling_even_if_the_restart_came_late() -> None:
    clock = Clock()
    backoff = make(clock, initial=1.0, maximum=60.0, reset_after=30.0)
    backoff.next_delay("k")
    backoff.next_delay("k")
    clock.now += 500  # e.g. stuck on an image pull before the restart
    backoff.note_start("k")
    clock.now += 2
    backoff.note_exit("k")  # ran_for measured from note_start: 2s
    assert backoff.next_delay("k") == 4.0


def test_note_exit_measures_from_note_start() -> None:
    clock = Clock()
    backoff = make(clock, initial=1.0, reset_after=30.0)
    backoff.next_delay("k")
    backoff.note_start("k")
    clock.now += 40
    backoff.note_exit("k")
    assert "k" not in backoff
    assert backoff.next_delay("k") == 1.0


def test_without_exit_reports_silence_resets_like_upstream() -> None:
    clock = Clock()
    backoff = make(clock, initial=1.0, maximum=60.0, reset_after=30.0)
    backoff.next_delay("k")
    backoff.next_delay("k")  # 2s window
    clock.now += 31  # window (2) + reset_after (30) not over yet
    assert backoff.next_delay("k") == 4.0
    clock.now += 4 + 30  # restarted at the window's end and ran 30s
    assert backoff.next_delay("k") == 1.0


def test_started_long_ago_without_exit_report_resets() -> None:
    clock = Clock()
    backoff = make(clock, initial=1.0, reset_after=30.0)
    backoff.next_delay("k")
    backoff.note_start("k")
    clock.now += 30
    assert backoff.next_delay("k") == 1.0


def test_sync_loop_style_first_restart_is_immediate() -> None:
    """remaining_after_exit + step-at-restart, as the kubelet's sync loop drives it."""
    clock = Clock()
    backoff = make(clock, initial=10.0, maximum=40.0, reset_after=600.0)
    backoff.note_start("k", at=clock.now)
    clock.now += 1
    assert backoff.remaining_after_exit("k", finished=clock.now, ran_for=1.0) == 0.0
    backoff.step("k")  # restart now
    backoff.note_start("k", at=clock.now)
    clock.now += 1
    finished = clock.now
    assert backoff.remaining_after_exit("k", finished, 1.0) == 10.0
    clock.now += 4
    # Asking again is harmless and counts from the exit.
    assert backoff.remaining_after_exit("k", finished, 1.0) == pytest.approx(6.0)
    assert backoff.in_backoff("k")
    clock.now += 6
    assert backoff.remaining_after_exit("k", finished, 1.0) == 0.0
    backoff.step("k")
    assert backoff.current("k") == 20.0
    backoff.note_start("k", at=clock.now)
    clock.now += 700
    assert backoff.remaining_after_exit("k", clock.now, 700.0) == 0.0
    assert backoff.current("k") == 0.0
    backoff.step("k")
    assert backoff.current("k") == 10.0


def test_forget_and_forget_prefix() -> None:
    clock = Clock()
    backoff = make(clock)
    for key in ("u1/a", "u1/b", "u2/a"):
        backoff.next_delay(key)
    backoff.forget("u2/a")
    backoff.forget("missing")
    assert "u2/a" not in backoff
    backoff.forget_prefix("u1/")
    assert len(backoff) == 0


def test_gc_drops_only_stale_keys() -> None:
    clock = Clock()
    backoff = make(clock, initial=1.0, maximum=8.0, reset_after=10.0)
    backoff.next_delay("old")
    clock.now += 5
    backoff.next_delay("new")
    backoff.note_start("running")
    assert backoff.gc() == 0
    clock.now += 6.5  # "old": 11.5s idle > 1 + 10
    assert backoff.gc() == 1
    assert "old" not in backoff and "new" in backoff and "running" in backoff
    assert backoff.gc(now=clock.now + 100) == 2
    assert len(backoff) == 0


def test_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError):
        Backoff(initial=0)
    with pytest.raises(ValueError):
        Backoff(initial=10, maximum=5)
    with pytest.raises(ValueError):
        Backoff(reset_after=-1)
