"""Routes to the other nodes' pods (`--sync-pod-routes`), as Kubernetes' kubenet /
flannel host-gw do on one L2 network: for every other Node with a pod CIDR, a route
`ip route replace POD_CIDR via ITS_INTERNAL_IP`; routes of nodes that go away are
removed. Only routes this kubelet added are ever touched.

A peer's Node object is input from the network, so a route is installed only when
it cannot take this machine's own connectivity away (`refusal`): never a default
route, never a range holding one of the node's addresses, a connected network, a
gateway of its own routes or its own pod CIDR, and only via a gateway on a
connected network. What the host has is read each sync (`HostNetwork`, from
`ip -j addr` / `ip -j route`); if it cannot be read, nothing is added.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass
class HostNetwork:
    """What of this machine a pod route must leave alone."""

    addresses: list[Address] = field(default_factory=list)
    connected: list[Network] = field(default_factory=list)  # on-link networks
    gateways: list[Address] = field(default_factory=list)  # of its own routes

    def on_link(self, address: Address) -> bool:
        return any(address in net for net in self.connected if net.version == address.version)


HostReader = Callable[[], Awaitable[HostNetwork]]


def _routes_json(out: str) -> list[dict[str, Any]]:
    routes = json.loads(out or "[]")
    return routes if isinstance(routes, list) else []


async def read_host_network(run: IpRunner = run_ip) -> HostNetwork:
    """The node's addresses, connected networks and route gateways (routes this
    kubelet added, proto ROUTE_PROTO, excluded). Raises OSError when `ip` fails."""
    host = HostNetwork()
    code, out = await run(["-j", "addr", "show"])
    if code:
        raise OSError(f"ip addr: {out}")
    for link in json.loads(out or "[]"):
        for info in link.get("addr_info", []):
            with contextlib.suppress(KeyError, ValueError):
                iface = ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}")
                host.addresses.append(iface.ip)
                if iface.network.prefixlen < iface.network.max_prefixlen:
                    host.connected.append(iface.network)
    for family in ("-4", "-6"):
        code, out = await run(["-j", family, "route", "show", "table", "main"])
        if code:
            raise OSError(f"ip route: {out}")
        for route in _routes_json(out):
            if str(route.get("protocol", "")) == ROUTE_PROTO:
                continue
            with contextlib.suppress(ValueError):
                if "gateway" in route:
                    host.gateways.append(ipaddress.ip_address(route["gateway"]))
                elif route.get("dst", "default") != "default":
                    host.connected.append(ipaddress.ip_network(route["dst"], strict=False))
    return host


def _overlapping(net: Network, others: Iterable[Network]) -> Network | None:
    return next((o for o in others if o.version == net.version and o.overlaps(net)), None)


def refusal(cidr: str, via: str, host: HostNetwork, own_cidrs: Iterable[str]) -> str:
    """Why `ip route replace CIDR via VIA` must not be installed here ("" if safe)."""
    try:
        net = ipaddress.ip_network(cidr, strict=True)
        gateway = ipaddress.ip_address(via)
    except ValueError as exc:
        return f"not a route: {exc}"
    if net.prefixlen == 0:
        return "it is a default route"
    if net.version != gateway.version:
        return "the gateway's address family differs from the range's"
    mine = next((a for a in (*host.addresses, *host.gateways) if a in net), None)
    if mine is not None:
        return f"the range holds {mine}, an address or gateway of this node"
    clash = _overlapping(net, host.connected)
    if clash is not None:
        return f"the range overlaps the connected network {clash}"
    own = [ipaddress.ip_network(c, strict=False) for c in own_cidrs if _is_cidr(c)]
    clash = _overlapping(net, own)
    if clash is not None:
        return f"the range overlaps this node's pod CIDR {clash}"
    if gateway in host.addresses:
        return f"the gateway {gateway} is this node's own address"
    if not host.on_link(gateway):
        return f"the gateway {gateway} is not on a connected network"
    return ""


def _is_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def own_pod_cidrs(nodes: list[core_pb2.Node], own: str) -> list[str]:
    node = next((n for n in nodes if n.metadata.name == own), None)
    if node is None:
        return []
    return [c for c in (node.spec.pod_cidr, *node.spec.pod_cidrs) if c]


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
    def __init__(
        self,
        api: Client,
        node_name: str,
        run: IpRunner = run_ip,
        host: HostReader | None = None,
    ) -> None:
        self.node_name = node_name
        self.nodes: Informer[core_pb2.Node] = Informer(api.nodes)
        self.nodes.add_handler(lambda *_: self._changed.set())
        self._run = run
        self._host = host or (lambda: read_host_network(run))
        self._changed = asyncio.Event()
        self.installed: dict[str, str] = {}  # what this kubelet added
        self.refused: dict[str, str] = {}  # pod CIDR -> why its route is not installed

    async def _safe_routes(self, wanted: dict[str, str], own_cidrs: list[str]) -> dict[str, str]:
        """`wanted` without the routes that would harm this node (logged once each)."""
        try:
            host = await self._host()
        except (OSError, ValueError) as exc:
            log.warning("cannot read this node's routes; adding no pod routes", error=str(exc))
            return {c: v for c, v in wanted.items() if self.installed.get(c) == v}
        refused: dict[str, str] = {}
        for cidr, via in wanted.items():
            reason = refusal(cidr, via, host, own_cidrs)
            if reason:
                refused[cidr] = reason
                if self.refused.get(cidr) != reason:
                    log.warning("pod route refused", cidr=cidr, via=via, reason=reason)
        self.refused = refused
        return {c: v for c, v in wanted.items() if c not in refused}

    async def sync(self) -> None:
        nodes = self.nodes.list()
        wanted = wanted_routes(nodes, self.node_name)
        wanted = await self._safe_routes(wanted, own_pod_cidrs(nodes, self.node_name))
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
