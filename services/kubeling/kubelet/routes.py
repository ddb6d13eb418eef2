"""Routes to the other nodes' pods (`--sync-pod-routes`), as Kubernetes' kubenet /
flannel host-gw do on one L2 network: for every other Node with a pod CIDR, a route
`ip route replace POD_CIDR via ITS_INTERNAL_IP`; routes of nodes that go away are
removed. Only routes this kubelet added are ever touched.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from kubeling.client import Client
from kubeling.client.informer import Informer
from kubeling.v1 import core_pb2

log = structlog.get_logger(__name__)

IpRunner = Callable[[list[str]], Awaitable[tuple[int, str]]]
# Routes are added with this protocol number, so a restarted kubelet finds (and
# removes, when their node is gone) the ones an earlier run added.
ROUTE_PROTO = "88"


async def run_ip(args: list[str]) -> tuple[int, str]:
    """`ip ARGS`: its exit status, and its output (stderr when it failed)."""
    proc = await asyncio.create_subprocess_exec(
        "ip", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    code = proc.returncode or 0
    return code, (err if code else out).decode(errors="replace").strip()


def wanted_routes(nodes: list[core_pb2.Node], own: str) -> dict[str, str]:
    """pod CIDR -> the node address to reach it through, for every other node."""
    routes = {}
    for node in nodes:
        if node.metadata.name == own or not node.spec.pod_cidr:
            continue
        address = next((a.address for a in node.status.addresses if a.type == "InternalIP"), "")
        if address:
            routes[node.spec.pod_cidr] = address
    return routes


class PodRouteSync:
    def __init__(self, api: Client, node_name: str, run: IpRunner = run_ip) -> None:
        self.node_name = node_name
        self.nodes: Informer[core_pb2.Node] = Informer(api.nodes)
        self.nodes.add_handler(lambda *_: self._changed.set())
        self._run = run
        self._changed = asyncio.Event()
        self.installed: dict[str, str] = {}  # what this kubelet added

    async def sync(self) -> None:
        wanted = wanted_routes(self.nodes.list(), self.node_name)
        for cidr in [c for c in self.installed if c not in wanted]:
            code, err = await self._run(["route", "del", cidr, "via", self.installed[cidr]])
            if code and "No such process" not in err:
                log.warning("pod route not removed", cidr=cidr, error=err)
                continue
            del self.installed[cidr]
            log.info("pod route removed", cidr=cidr)
        for cidr, via in wanted.items():
            if self.installed.get(cidr) == via:
                continue
            code, err = await self._run(
                ["route", "replace", cidr, "via", via, "proto", ROUTE_PROTO]
            )
            if code:
                log.warning("pod route not added", cidr=cidr, via=via, error=err)
                continue
            self.installed[cidr] = via
            log.info("pod route added", cidr=cidr, via=via)

    async def adopt(self) -> None:
        """Take over the routes an earlier run of this kubelet added."""
        code, out = await self._run(["route", "show", "proto", ROUTE_PROTO])
        for line in out.splitlines() if code == 0 else []:
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "via":
                self.installed[parts[0]] = parts[2]

    async def run(self) -> None:
        task = asyncio.create_task(self.nodes.run(), name="pod-routes-informer")
        try:
            await self.adopt()
            await self.nodes.synced.wait()
            while True:
                self._changed.clear()
                try:
                    await self.sync()
                except Exception:
                    log.exception("pod routes not synced; retrying")
                # A failed `ip` call is retried on the next change or after 10 s.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 10.0)
        finally:
            task.cancel()
