"""kube-proxy (nftables mode) benchmark, on the real kernel in a private network namespace.

Two layouts side by side (proxy/rules.py): `shared`, the default (services with up to
64 endpoints share the chains lb-1..lb-64 and are elements of one endpoint map), and
`chains`, the layout before it (a chain per service port: Proxier(lb_max=0)).

For each service count N (N service ports x E endpoints, built directly as ServicePorts)
and each layout:
- the first full sync (replaces the table) and a second full resync, through
  `Proxier(LibNftables())`, and how long libnftables itself took of each;
- one endpoint of one service replaced, applied by a partial sync (20 services);
- the floor: the very script the first full sync sent, run by `nft -f` on an empty
  namespace, and our first full sync as a multiple of it;
- network programming latency (trigger-time annotation -> rules applied) of an
  in-process KubeProxy with a 0 s minimum sync interval against a real master holding
  N services (at most --latency-services) with slices, over 200 slice updates 20 ms apart;
- the resident memory of a `kubeling-proxy` process (default layout) once it has synced
  the N services of that master.

    python bench/proxy.py [--services 1000,10000,30000] [--endpoints 10]
                          [--latency-services MAX] [--layouts chains,shared]

Needs root (CAP_NET_ADMIN). It re-executes itself under `unshare --net`: every nft
command and the master's loopback listener live in a namespace that vanishes with the
process; the host's ruleset is never read or written, and no traffic leaves loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.table import Table
from tests.support.processes import MasterProcess

from kubeling.api.wellknown import (
    SERVICE_NAME_LABEL,
    TRIGGER_TIME_ANNOTATION,
    format_trigger_time,
)
from kubeling.client import Client
from kubeling.common.logging import setup_logging
from kubeling.proxy import rules as r
from kubeling.proxy.conntrack import RecordingConntrack
from kubeling.proxy.explain import explain
from kubeling.proxy.kubeproxy import KubeProxy, ProxyConfig
from kubeling.proxy.nft import FAMILY, TABLE, LibNftables, Transaction
from kubeling.proxy.proxier import Proxier
from kubeling.proxy.servicemap import Endpoint, ServicePort, service_key
from kubeling.v1 import core_pb2, discovery_pb2

NETNS_ENV = "KUBELING_BENCH_NETNS"
LAYOUTS = {"chains": 0, "shared": r.LB_MAX}  # name -> Proxier(lb_max=...)


def own_netns() -> str:
    return os.readlink("/proc/self/ns/net")


def enter_private_netns() -> None:
    """Re-exec under `unshare --net` (first call), or check that we are in a network
    namespace other than the one we were started in (after the re-exec)."""
    started_in = os.environ.get(NETNS_ENV)
    if not started_in:
        if os.geteuid() != 0:
            raise SystemExit("bench/proxy.py needs root: it programs nftables (in its own netns)")
        os.environ[NETNS_ENV] = own_netns()
        argv = ["unshare", "--net", sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
        os.execvp("unshare", argv)
    if own_netns() == started_in:
        raise SystemExit(f"refusing to run: still in the starting network namespace {started_in}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_BASE = int(ipaddress.IPv4Address("10.96.0.0"))  # the master's default /12
POD_BASE = int(ipaddress.IPv4Address("10.244.0.0"))
POD_ADDRESSES = 65_533  # 10.244.0.1 .. 10.244.255.253 (reused when N x E is larger)
NAMESPACE = "default"
PORT, TARGET_PORT = 80, 8080
PARTIAL_CHANGES = 20
CHANNELS = 8  # clients creating services and slices in part 4
IN_FLIGHT = 4  # per client


def pod_ip(n: int) -> str:
    return str(ipaddress.IPv4Address(POD_BASE + 1 + n % POD_ADDRESSES))


def fresh_ip(taken: set[str], start: int) -> str:
    """An address in the pod network that is not in `taken`."""
    n = start
    while pod_ip(n) in taken:
        n += 1
    return pod_ip(n)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def nft(*args: str) -> None:
    subprocess.run(["nft", *args], check=True, capture_output=True)


def delete_table() -> None:
    """Start from an empty namespace (untimed): `add` first so a missing table is fine."""
    subprocess.run(
        ["nft", "-f", "-"],
        input=f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n",
        text=True,
        check=True,
        capture_output=True,
    )


# -- parts 1 to 3: the proxier on its own --------------------------------------------


class RecordingBackend:
    """LibNftables that remembers the last transaction (rendered after the timing, so
    capturing costs the measured sync nothing) and how long libnftables took."""

    def __init__(self) -> None:
        self.real = LibNftables()
        self.last: Transaction | None = None
        self.apply_seconds = 0.0

    def apply(self, tx: Transaction) -> None:
        self.last = tx
        start = time.perf_counter()
        try:
            self.real.apply(tx)
        finally:
            self.apply_seconds = time.perf_counter() - start

    def map_value(self, map_name: str, key: str) -> str | None:
        return self.real.map_value(map_name, key)

    def map_element(self, map_name: str, key: str) -> tuple[str, str] | None:
        return self.real.map_element(map_name, key)

    def chain_rules(self, chain: str) -> list[str] | None:
        return self.real.chain_rules(chain)

    def dump(self) -> str:
        return self.real.dump()


def build_desired(services: int, endpoints: int) -> dict[str, list[ServicePort]]:
    desired = {}
    for i in range(services):
        name = f"svc-{i:05d}"
        eps = tuple(
            sorted(Endpoint(pod_ip(i * endpoints + j), TARGET_PORT) for j in range(endpoints))
        )
        sp = ServicePort(
            namespace="bench",
            name=name,
            port_name="http",
            protocol="tcp",
            cluster_ip=str(ipaddress.IPv4Address(SERVICE_BASE + 1 + i)),
            port=PORT,
            node_port=0,
            endpoints=eps,
        )
        desired[service_key("bench", name)] = [sp]
    return desired


def check_installed(backend: RecordingBackend, sp: ServicePort) -> None:
    """The kernel sends the service's ClusterIP to exactly its endpoints (a spot check
    that the sync did what it said, read back through nft by `proxy explain`)."""
    found = explain(backend, sp.cluster_ip, sp.port, sp.protocol, is_local=lambda a: False)
    wanted = [(ep.ip, ep.port) for ep in sp.endpoints]
    if found.service != sp.service or found.endpoints != wanted:
        raise RuntimeError(f"{sp.service}: the kernel has {found}, not {wanted}")


@dataclass
class SyncBench:
    services: int
    endpoints: int
    layout: str
    chains: int = 0
    rules: int = 0
    operations: int = 0
    script_bytes: int = 0
    full: float = 0.0
    full_nft: float = 0.0
    resync: float = 0.0
    resync_nft: float = 0.0
    partial: list[float] = field(default_factory=list)
    partial_nft: list[float] = field(default_factory=list)
    partial_operations: int = 0
    raw: float = 0.0


def sync_bench(
    services: int, endpoints: int, layout: str, work: Path, console: Console
) -> SyncBench:
    out = SyncBench(services, endpoints, layout)
    desired = build_desired(services, endpoints)
    delete_table()
    backend = RecordingBackend()
    proxier = Proxier(backend, CLUSTER_CIDR, lb_max=LAYOUTS[layout])

    start = time.perf_counter()
    result = proxier.sync_full(desired)
    out.full = time.perf_counter() - start
    out.full_nft = backend.apply_seconds
    assert backend.last is not None
    script = backend.last.script()
    out.operations = result.operations
    out.script_bytes = len(script.encode())
    out.chains, out.rules = proxier.chains, proxier.rules
    keys = list(desired)
    for key in (keys[0], keys[len(keys) // 2], keys[-1]):
        check_installed(backend, desired[key][0])
    console.print(f"[{services:,} services, {layout}] first full sync {out.full:.2f} s", end="; ")

    start = time.perf_counter()
    proxier.sync_full(desired)
    out.resync = time.perf_counter() - start
    out.resync_nft = backend.apply_seconds
    console.print(f"resync {out.resync:.2f} s", end="; ")

    for k in range(PARTIAL_CHANGES):
        key = keys[(2 * k + 1) * len(keys) // (2 * PARTIAL_CHANGES)]
        (sp,) = desired[key]
        taken = {ep.ip for ep in sp.endpoints}
        new_ip = fresh_ip(taken, POD_ADDRESSES - 1 - k * endpoints)
        eps = tuple(sorted((Endpoint(new_ip, TARGET_PORT), *sp.endpoints[1:])))
        changed = replace(sp, endpoints=eps)
        desired[key] = [changed]
        start = time.perf_counter()
        result = proxier.sync_partial({key: [changed]})
        out.partial.append(time.perf_counter() - start)
        out.partial_nft.append(backend.apply_seconds)
        out.partial_operations = max(out.partial_operations, result.operations)
        check_installed(backend, changed)
    console.print(f"partial p50 {statistics.median(out.partial) * 1000:.1f} ms", end="; ")

    path = work / f"full-{services}-{layout}.nft"
    path.write_text(script)
    nft("delete", "table", FAMILY, TABLE)
    start = time.perf_counter()
    subprocess.run(["nft", "-f", str(path)], check=True)
    out.raw = time.perf_counter() - start
    console.print(f"raw nft -f {out.raw:.2f} s")
    return out


# -- part 4: programming latency through a real master ----------------------------------


def make_service(name: str) -> core_pb2.Service:
    service = core_pb2.Service()
    service.metadata.name = name
    service.metadata.namespace = NAMESPACE
    service.spec.type = "ClusterIP"
    port = service.spec.ports.add(name="http", protocol="TCP", port=PORT)
    port.target_port.number_value = TARGET_PORT
    return service


def make_slice(name: str, addresses: list[str]) -> discovery_pb2.EndpointSlice:
    endpoint_slice = discovery_pb2.EndpointSlice()
    endpoint_slice.metadata.name = f"{name}-slice"
    endpoint_slice.metadata.namespace = NAMESPACE
    endpoint_slice.metadata.labels[SERVICE_NAME_LABEL] = name
    endpoint_slice.address_type = "IPv4"
    for address in addresses:
        endpoint = endpoint_slice.endpoints.add(addresses=[address])
        endpoint.conditions.ready = True
    endpoint_slice.ports.add(name="http", protocol="TCP", port=TARGET_PORT)
    return endpoint_slice


def slice_ips(endpoint_slice: discovery_pb2.EndpointSlice) -> list[str]:
    return [e.addresses[0] for e in endpoint_slice.endpoints]


async def populate(
    address: str, services: int, endpoints: int
) -> dict[str, discovery_pb2.EndpointSlice]:
    """Services (the master allocates their cluster IPs) and one slice each, created by
    several clients concurrently. Returns the slices as created, by service name."""
    clients = [Client(address, timeout=120) for _ in range(CHANNELS)]
    slices: dict[str, discovery_pb2.EndpointSlice] = {}
    try:
        todo = iter(range(services))

        async def worker(api: Client) -> None:
            for i in todo:
                name = f"svc-{i:05d}"
                created = await api.services.create(make_service(name))
                if not created.spec.cluster_ip:
                    raise RuntimeError(f"{name}: the master allocated no cluster IP")
                addresses = [pod_ip(i * endpoints + j) for j in range(endpoints)]
                slices[name] = await api.endpoint_slices.create(make_slice(name, addresses))

        await asyncio.gather(*(worker(c) for c in clients for _ in range(IN_FLIGHT)))
    finally:
        for api in clients:
            await api.close()
    return slices


@dataclass
class LatencyBench:
    services: int
    populate: float = 0.0
    first_sync: dict[str, float] = field(default_factory=dict)  # by layout
    changes: dict[str, int] = field(default_factory=dict)
    syncs: dict[str, int] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    rss_mb: float = 0.0  # a kubeling-proxy process, default layout, after its first sync
    rss_peak_mb: float = 0.0


async def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {within:.0f} s")
        await asyncio.sleep(0.005)


async def latency_bench(
    services: int,
    endpoints: int,
    changes: int,
    spacing: float,
    layouts: list[str],
    work: Path,
    console: Console,
) -> LatencyBench:
    out = LatencyBench(services)
    delete_table()
    data = Path(tempfile.mkdtemp(prefix=f"latency-{services}-", dir=work))
    master = MasterProcess(data / "master", None, "--controllers=", "--log-level", "warning")
    try:
        master.start()
        start = time.monotonic()
        slices = await populate(master.address, services, endpoints)
        out.populate = time.monotonic() - start
        console.print(
            f"(latency part, {services:,} services) created through the API in {out.populate:.1f} s"
        )
        for layout in layouts:
            delete_table()
            await programming_latency(
                master.address, layout, slices, changes, spacing, endpoints, out, console
            )
        delete_table()
        out.rss_mb, out.rss_peak_mb = await asyncio.to_thread(
            proxy_process_rss, master.address, data
        )
        console.print(f"  kubeling-proxy process: {out.rss_mb:.0f} MB resident")
        return out
    except BaseException:
        tail = master.log().splitlines()[-40:]
        if tail:
            print("--- last lines of the master log:", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        master.stop()


async def programming_latency(
    address: str,
    layout: str,
    slices: dict[str, discovery_pb2.EndpointSlice],
    changes: int,
    spacing: float,
    endpoints: int,
    out: LatencyBench,
    console: Console,
) -> None:
    """An in-process KubeProxy with the given layout: its first sync, then `changes`
    slice updates (`slices` is updated to what was written)."""
    api = Client(address, timeout=60)
    writer = Client(address, timeout=60)
    config = ProxyConfig(
        node_name="bench",
        cluster_cidr=CLUSTER_CIDR,
        min_sync_interval=0.0,
        sync_period=3600,
    )
    proxy = KubeProxy(config, api, LibNftables(), RecordingConntrack())
    proxy.proxier.lb_max = LAYOUTS[layout]
    services = len(slices)
    try:
        start = time.monotonic()
        await proxy.start()
        try:
            await asyncio.wait_for(proxy.synced.wait(), 300)
        except TimeoutError:
            raise RuntimeError(f"proxy never synced: {proxy.state.last_error!r}") from None
        out.first_sync[layout] = time.monotonic() - start
        if proxy.proxier.service_ports != services:
            raise RuntimeError(
                f"proxy programmed {proxy.proxier.service_ports} of {services} service ports"
            )

        proxy.state.latencies.clear()
        syncs_before = proxy.state.syncs
        names = sorted(slices)
        targets = [names[k * len(names) // changes] for k in range(changes)]
        if len(names) < changes:
            targets = [names[k % len(names)] for k in range(changes)]
        expected: dict[str, set[str]] = {}
        # Fresh addresses, different from those of an earlier layout's run.
        offset = changes * endpoints * list(LAYOUTS).index(layout)
        begin = time.monotonic()
        for k, name in enumerate(targets):
            await asyncio.sleep(max(0.0, begin + k * spacing - time.monotonic()))
            endpoint_slice = slices[name]
            ips = slice_ips(endpoint_slice)
            new_ip = fresh_ip(set(ips), POD_ADDRESSES - 1 - offset - k * endpoints)
            endpoint_slice.endpoints[k % len(ips)].addresses[0] = new_ip
            stamp = format_trigger_time(time.time())
            endpoint_slice.metadata.annotations[TRIGGER_TIME_ANNOTATION] = stamp
            slices[name] = await writer.endpoint_slices.update(endpoint_slice)
            expected[service_key(NAMESPACE, name)] = set(slice_ips(slices[name]))
        out.changes[layout] = len(targets)

        def applied() -> bool:
            if proxy.state.queued_since is not None:
                return False
            if len(proxy.state.latencies) < len(expected):
                return False
            return all(
                {ep.ip for sp in proxy.proxier.applied_ports(key) for ep in sp.endpoints} == ips
                for key, ips in expected.items()
            )

        await wait_for(applied, 120, "all endpoint changes applied")
        await asyncio.sleep(0.1)  # let a sync that is finishing record its latencies
        out.syncs[layout] = proxy.state.syncs - syncs_before
        out.latencies[layout] = list(proxy.state.latencies)
        if proxy.state.failures:
            raise RuntimeError(f"proxy sync failures: {proxy.state.last_error}")
    finally:
        await proxy.stop()
        await api.close()
        await writer.close()
    console.print(
        f"  {layout}: first sync {out.first_sync[layout]:.1f} s; "
        f"{out.changes[layout]} changes in {out.syncs[layout]} syncs, "
        f"p50 {statistics.median(out.latencies[layout]) * 1000:.1f} ms"
    )


def proxy_process_rss(address: str, data: Path) -> tuple[float, float]:
    """Start `kubeling-proxy` against the master, wait for its first full sync, and
    read its resident memory (now, and the peak), in MB."""
    log = data / "proxy.log"
    command = [
        sys.executable, "-m", "kubeling.proxy.main",
        "--master", address, "--node-name", "bench", "--insecure",
        "--cluster-cidr", CLUSTER_CIDR, "--sync-period", "3600",
        "--listen", f"unix:{data / 'proxy.sock'}",
        "--healthz-bind-address", "127.0.0.1:10256", "--log-level", "warning",
    ]  # fmt: skip
    # This checkout's kubeling, installed or not.
    services_dir = str(Path(__file__).resolve().parent.parent / "services")
    path = os.pathsep.join(p for p in (services_dir, os.environ.get("PYTHONPATH", "")) if p)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": path}
        )
    try:

        def full_syncs() -> int:
            try:
                with urllib.request.urlopen("http://127.0.0.1:10256/metrics", timeout=5) as reply:
                    text = reply.read().decode()
            except OSError:
                return 0
            for line in text.splitlines():
                if line.startswith("kubeproxy_sync_full_proxy_rules_duration_seconds_count"):
                    return int(float(line.split()[-1]))
            return 0

        deadline = time.monotonic() + 300
        while full_syncs() < 1:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kubeling-proxy did not sync:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        status = Path(f"/proc/{process.pid}/status").read_text()
        fields = {k: v for k, _, v in (line.partition(":") for line in status.splitlines())}
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the table ------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:,.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", default="1000,10000,30000", help="comma list of counts")
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints per service")
    parser.add_argument(
        "--latency-services",
        type=int,
        default=100_000,
        help="at most this many services in the master for the latency part (default: N)",
    )
    parser.add_argument("--latency-changes", type=int, default=200)
    parser.add_argument("--latency-spacing", type=float, default=0.02, help="seconds")
    parser.add_argument(
        "--layouts", default=",".join(LAYOUTS), help=f"comma list of {', '.join(LAYOUTS)}"
    )
    args = parser.parse_args()
    layouts = [name for name in args.layouts.split(",") if name]
    unknown = set(layouts) - set(LAYOUTS)
    if unknown:
        raise SystemExit(f"--layouts: unknown {', '.join(sorted(unknown))}")
    enter_private_netns()
    setup_logging("warning")

    # Wide enough for six columns when the output is not a terminal (80 by default).
    console = Console() if sys.stdout.isatty() else Console(width=170)
    counts = [int(n) for n in args.services.split(",")]
    syncs: dict[tuple[int, str], SyncBench] = {}
    latencies: dict[int, LatencyBench] = {}
    with tempfile.TemporaryDirectory(prefix="kubeling-bench-proxy-") as tmp:
        work = Path(tmp)
        for count in counts:
            for layout in layouts:
                syncs[count, layout] = sync_bench(count, args.endpoints, layout, work, console)
            latencies[count] = asyncio.run(
                latency_bench(
                    min(count, args.latency_services),
                    args.endpoints,
                    args.latency_changes,
                    args.latency_spacing,
                    layouts,
                    work,
                    console,
                )
            )

    table = Table(
        title=f"kube-proxy (nftables), {args.endpoints} endpoints per service, "
        f"private netns, nft {nft_version()}, {os.cpu_count()} CPUs"
    )
    table.add_column("measure")
    columns = [(count, layout) for count in counts for layout in layouts]
    for count, layout in columns:
        table.add_column(f"{count:,} services\n{layout}", justify="right")
    Cell = Callable[[SyncBench, LatencyBench, str], str]
    rows: tuple[tuple[str, Cell], ...] = (
        ("chains / rules in the table", lambda s, t, k: f"{s.chains:,} / {s.rules:,}"),
        (
            "first full sync: commands / script size",
            lambda s, t, k: f"{s.operations:,} / {s.script_bytes / 1e6:.1f} MB",
        ),
        ("first full sync (replaces the table)", lambda s, t, k: secs(s.full)),
        ("  of which libnftables", lambda s, t, k: secs(s.full_nft)),
        ("second full sync (resync)", lambda s, t, k: secs(s.resync)),
        ("  of which libnftables", lambda s, t, k: secs(s.resync_nft)),
        (
            "one endpoint replaced: partial sync p50",
            lambda s, t, k: ms(statistics.median(s.partial)),
        ),
        ("  of which libnftables (p50)", lambda s, t, k: ms(statistics.median(s.partial_nft))),
        ("one endpoint replaced: partial sync max", lambda s, t, k: ms(max(s.partial))),
        ("one endpoint replaced: nft commands", lambda s, t, k: f"{s.partial_operations}"),
        ("raw `nft -f` of the first sync's script", lambda s, t, k: secs(s.raw)),
        ("first full sync / raw nft", lambda s, t, k: f"{s.full / s.raw:.2f}x"),
        ("latency part: services in the master", lambda s, t, k: f"{t.services:,}"),
        ("  created through the API in", lambda s, t, k: secs(t.populate)),
        ("  KubeProxy start -> first sync", lambda s, t, k: secs(t.first_sync[k])),
        ("  slice updates -> syncs", lambda s, t, k: f"{t.changes[k]} -> {t.syncs[k]}"),
        (
            "  network programming latency p50",
            lambda s, t, k: ms(statistics.median(t.latencies[k])),
        ),
        ("  network programming latency p99", lambda s, t, k: ms(pct(t.latencies[k], 0.99))),
        (
            "kubeling-proxy RSS after its first sync (peak)",
            lambda s, t, k: f"{t.rss_mb:.0f} MB ({t.rss_peak_mb:.0f} MB)" if k == "shared" else "",
        ),
    )
    for label, cell in rows:
        table.add_row(label, *(cell(syncs[c, k], latencies[c], k) for c, k in columns))
    console.print(table)
    console.print(
        f"partial sync: {PARTIAL_CHANGES} services, one at a time, after the two full syncs. "
        f"latency: an in-process KubeProxy (min sync interval 0 s) against a real master; "
        f"{args.latency_changes} slice updates {args.latency_spacing * 1000:.0f} ms apart, "
        "each stamped with the trigger-time annotation just before the write. "
        "RSS: a kubeling-proxy process (default layout, shared) against the same master"
    )


def nft_version() -> str:
    done = subprocess.run(["nft", "--version"], check=True, capture_output=True, text=True)
    return done.stdout.split()[1] if len(done.stdout.split()) > 1 else "?"


if __name__ == "__main__":
    main()
