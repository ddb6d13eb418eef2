"""Go-style durations ("1h", "1m30s", "500ms") or a bare number of seconds, as
Kubernetes' flags take them (--event-ttl=1h0m0s)."""

from __future__ import annotations

import re

__all__ = ["parse_duration"]

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, bare_seconds: bool = True) -> float:
    """Seconds; ValueError for anything else. `bare_seconds=False` insists on units
    (as kubectl's --since does)."""
    text = text.strip()
    if bare_seconds:
        try:
            return float(text)
        except ValueError:
            pass
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r} (e.g. 3600, 90s, 1h30m)")
    return sum(float(n) * _UNITS[u] for n, u in parts)
