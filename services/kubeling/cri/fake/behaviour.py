"""The fake's behaviour language: how a fake container behaves, read from its spec.

Settings come from the container's env, or from ``FAKE_X=...`` words in its
command/args, in the spirit of Nomad's mock driver (``run_for``, ``exit_code``,
``start_error``):

  FAKE_RUN_FOR=2s          exit by itself after this long (default: run until stopped)
  FAKE_EXIT_CODE=3         exit code when it exits by itself (reason Completed/Error)
  FAKE_START_ERROR=msg     StartContainer fails with this message
  FAKE_OOM=1               killed by the OOM killer at FAKE_RUN_FOR (default at once);
                           also happens when FAKE_MEMORY exceeds the memory limit
  FAKE_STOP_DELAY=1s       takes this long to exit on SIGTERM (else killed, 137)
  FAKE_IGNORE_SIGTERM=1    never exits on SIGTERM: StopContainer waits out the timeout
  FAKE_STOP_EXIT_CODE=0    exit code after a graceful SIGTERM (default 143)
  FAKE_EXEC_STDOUT / FAKE_EXEC_STDERR / FAKE_EXEC_EXIT_CODE   ExecSync results
  FAKE_EXEC_DELAY=1s       ExecSync takes this long (DEADLINE_EXCEEDED past timeout)
  FAKE_EXEC_FAIL_AFTER=5s  ExecSync exits 1 once the container has run this long
  FAKE_MEMORY=64Mi, FAKE_CPU_MILLICORES=5   what the stats report

Without FAKE_EXEC_* settings, ExecSync knows ``echo``, ``true`` and ``false``.
Pure: no runtime state here.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubeling.common.duration import parse_duration
from kubeling.cri.api import pb

__all__ = ["Behaviour", "parse_behaviour", "parse_bytes", "parse_duration"]

_BYTE_UNITS = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "Ki": 1024, "Mi": 1024**2}
_BYTE_UNITS["Gi"] = 1024**3


def parse_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)(|k|M|G|Ki|Mi|Gi)", text.strip())
    if not match:
        raise ValueError(f"invalid byte quantity {text!r}")
    return int(match[1]) * _BYTE_UNITS[match[2]]


def _parse_bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True, slots=True)
class Behaviour:
    """What a fake container does; see this module's docstring for the knobs."""

    run_for: float | None = None
    exit_code: int = 0
    start_error: str = ""
    oom: bool = False
    stop_delay: float = 0.0
    stop_exit_code: int = 143
    exec_stdout: bytes | None = None
    exec_stderr: bytes = b""
    exec_exit_code: int | None = None
    exec_delay: float = 0.0
    exec_fail_after: float | None = None
    memory_bytes: int = 4 * 1024 * 1024
    cpu_millicores: int = 1


_PARSERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "FAKE_RUN_FOR": ("run_for", parse_duration),
    "FAKE_EXIT_CODE": ("exit_code", int),
    "FAKE_START_ERROR": ("start_error", str),
    "FAKE_OOM": ("oom", _parse_bool),
    "FAKE_STOP_DELAY": ("stop_delay", parse_duration),
    "FAKE_IGNORE_SIGTERM": ("stop_delay", lambda v: math.inf if _parse_bool(v) else 0.0),
    "FAKE_STOP_EXIT_CODE": ("stop_exit_code", int),
    "FAKE_EXEC_STDOUT": ("exec_stdout", str.encode),
    "FAKE_EXEC_STDERR": ("exec_stderr", str.encode),
    "FAKE_EXEC_EXIT_CODE": ("exec_exit_code", int),
    "FAKE_EXEC_DELAY": ("exec_delay", parse_duration),
    "FAKE_EXEC_FAIL_AFTER": ("exec_fail_after", parse_duration),
    "FAKE_MEMORY": ("memory_bytes", parse_bytes),
    "FAKE_CPU_MILLICORES": ("cpu_millicores", int),
}


def parse_behaviour(config: pb.ContainerConfig) -> Behaviour:
    """Read FAKE_* settings from env, then from ``FAKE_X=...`` words in command/args.

    Raises ValueError for a malformed value, so typos fail CreateContainer loudly.
    """
    settings: dict[str, str] = {kv.key: kv.value for kv in config.envs}
    for word in itertools.chain(config.command, config.args):
        key, sep, value = word.partition("=")
        if sep and key in _PARSERS:
            settings[key] = value
    values: dict[str, Any] = {}
    for key, raw in settings.items():
        if key in _PARSERS:
            name, parse = _PARSERS[key]
            try:
                values[name] = parse(raw)
            except ValueError as exc:
                raise ValueError(f"{key}={raw!r}: {exc}") from None
    return Behaviour(**values)
