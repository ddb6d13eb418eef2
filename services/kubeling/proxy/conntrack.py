"""Clearing stale UDP conntrack entries (UDP has no connection to reset: without
this, a client keeps sending to an endpoint that is gone until its entry expires)."""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from kubeling.proxy.proxier import StaleFlow

log = structlog.get_logger(__name__)


class Conntrack(Protocol):
    async def clear(self, flow: StaleFlow) -> None: ...


def conntrack_args(flow: StaleFlow) -> list[str]:
    """The `conntrack -D` filter for a flow, as upstream kube-proxy deletes them."""
    args = ["-D", "-p", flow.protocol]
    if flow.node_port:
        args += ["--orig-port-dst", str(flow.port)]
    else:
        args += ["--orig-dst", flow.address, "--orig-port-dst", str(flow.port)]
    if flow.endpoint:
        args += ["--dst-nat", flow.endpoint]
    return args


class ConntrackTool:
    """The `conntrack` command (Debian's conntrack package), in the proxy's netns."""

    def __init__(self, binary: str = "conntrack") -> None:
        self.binary = binary

    async def clear(self, flow: StaleFlow) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                self.binary,
                *conntrack_args(flow),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            log.warning("cannot run conntrack", error=str(exc))
            return
        _, err = await proc.communicate()
        # Exit status 1 with "0 flow entries" is the common case: nothing to delete.
        if proc.returncode not in (0, 1):
            log.warning("conntrack failed", flow=flow, error=err.decode(errors="replace"))


class RecordingConntrack:
    """For tests: remembers what it was asked to clear."""

    def __init__(self) -> None:
        self.cleared: list[StaleFlow] = []

    async def clear(self, flow: StaleFlow) -> None:
        self.cleared.append(flow)
