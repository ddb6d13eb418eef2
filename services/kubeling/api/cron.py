"""CronJob schedules: what Kubernetes accepts, and the times a schedule names.

Kubernetes parses `spec.schedule` with the standard five-field cron format
(minute hour day-of-month month day-of-week) or a predefined descriptor
(@yearly, @monthly, @weekly, @daily, @hourly, ...); the time zone is the CronJob's
`spec.timeZone` (UTC when unset), never a TZ= prefix. `croniter` does the
arithmetic; it also accepts seconds and year fields, which Kubernetes does not, so
the field count is checked here first. Shared by validation (master) and the
CronJob controller, which must agree on what a schedule means.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterator

from croniter import croniter
from croniter.croniter import CroniterError

DESCRIPTORS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)


def schedule_problem(schedule: str) -> str | None:
    """Why `schedule` is not a schedule Kubernetes accepts; None when it is."""
    text = schedule.strip()
    if not text:
        return "a schedule is required"
    if "TZ=" in text:
        return "cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
    fields = text.split()
    if text.startswith("@"):
        if text == "@every" or text.startswith("@every "):
            return "@every intervals are not supported; use a cron expression"
        if len(fields) != 1 or text not in DESCRIPTORS:
            return f"unrecognized descriptor: {text}"
        return None
    if len(fields) != 5:
        return f"expected exactly 5 fields, found {len(fields)}: {text}"
    try:
        croniter(text, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    except (CroniterError, ValueError, KeyError) as exc:
        return str(exc) or "not a valid cron expression"
    return None


def time_zone_problem(name: str) -> str | None:
    """Why `name` is not a time zone this machine knows; None when it is."""
    if not name or name != name.strip():
        return "must be a valid IANA time zone name"
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {name}"
    return None


def zone(name: str) -> dt.tzinfo:
    """The time zone a CronJob's times are in: `name`, or UTC when empty."""
    return zoneinfo.ZoneInfo(name) if name else dt.UTC


def times_after(schedule: str, start: dt.datetime, tz: dt.tzinfo) -> Iterator[dt.datetime]:
    """The scheduled times strictly after `start` (aware), in UTC, forever."""
    it = croniter(schedule.strip(), start.astimezone(tz))
    while True:
        yield it.get_next(dt.datetime).astimezone(dt.UTC)


def last_before(schedule: str, end: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """The latest scheduled time at or before `end`, in UTC."""
    # croniter's get_prev is strictly before its start; a time exactly on the
    # schedule counts, so start a moment later.
    it = croniter(schedule.strip(), (end + dt.timedelta(microseconds=1)).astimezone(tz))
    return it.get_prev(dt.datetime).astimezone(dt.UTC)
