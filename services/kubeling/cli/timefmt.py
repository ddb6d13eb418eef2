"""Times as kubectl shows them: short ages ("5m3s") and RFC 1123 dates."""

from __future__ import annotations

import time
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp


def is_set(stamp: Timestamp) -> bool:
    return bool(stamp.seconds or stamp.nanos)


def age(stamp: Timestamp, now: float | None = None) -> str:
    if not is_set(stamp):
        return "<unknown>"
    now = time.time() if now is None else now
    return human_duration(now - (stamp.seconds + stamp.nanos / 1e9))


def human_duration(seconds_float: float) -> str:
    """kubectl's HumanDuration: precise when recent, coarser as time passes."""
    seconds = int(seconds_float)
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60 * 2:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    years = days // 365
    if hours < 24 * 365 * 8:
        rest = days % 365
        return f"{years}y{rest}d" if rest else f"{years}y"
    return f"{years}y"


def rfc1123(stamp: Timestamp) -> str:
    """'Mon, 02 Jan 2006 15:04:05 +0000' in local time, as `kubectl describe` prints."""
    if not is_set(stamp):
        return "<unset>"
    moment = datetime.fromtimestamp(stamp.seconds).astimezone()
    return moment.strftime("%a, %d %b %Y %H:%M:%S %z")
