"""Scheduler throughput with hollow nodes, end to end through the API.

For each node count: a master process running only the scheduler (fresh data
dir), N hollow nodes (real kubelets on the fake runtime, slow loops) in a second
process, then a burst of pods created through the API by several concurrent
clients while a list-then-watch of pods records when each one gets a node.

    python bench/scheduler.py [--nodes 1000,5000] [--pods 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.processes import MasterProcess, stop_process

from kubeling.client import Client
from kubeling.common.logging import setup_logging
from kubeling.kubelet.hollow import HollowCluster, HollowSettings
from kubeling.v1 import core_pb2

NAMESPACE = "default"
CHANNELS = 8
IN_FLIGHT = 8  # per channel


def make_pod(name: str) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = NAMESPACE
    container = pod.spec.containers.add(name="main", image="busybox")
    container.resources.requests["cpu"] = "10m"
    container.resources.requests["memory"] = "16Mi"
    return pod


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the hollow-node child process --------------------------------------------


async def hollow_main(master: str, nodes: int, log_dir: Path) -> None:
    """N hollow nodes with slow loops: the bench runs no node-lifecycle
    controller, so slow leases and status updates are fine and leave the CPU to
    the master."""
    settings = HollowSettings(
        relist_period=30.0, status_interval=300.0, lease_renew_interval=60.0, log_dir=log_dir
    )
    cluster = HollowCluster(master, nodes, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # A stop during registration must not wait for thousands of nodes to start.
    starting = asyncio.create_task(cluster.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and starting.exception() is not None:
        await cluster.stop()
        raise SystemExit(f"hollow nodes failed to start: {starting.exception()!r}")
    await stopping
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    await cluster.stop()


def start_hollow(master: str, nodes: int, data: Path) -> subprocess.Popen[bytes]:
    log = (data / "hollow.log").open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, __file__, "--hollow-child", "--master", master,
             "--nodes", str(nodes), "--log-dir", str(data / "hollow-logs")],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    finally:
        log.close()


# -- the bench ----------------------------------------------------------------


async def create_bare_nodes(address: str, count: int) -> None:
    """Ready Node objects with no kubelet behind them (as kube-scheduler's
    scheduler_perf does): isolates the scheduler from kubelet pod-status and
    event writes."""
    clients = [Client(address, timeout=120) for _ in range(CHANNELS)]
    try:
        names = iter(range(count))

        async def worker(api: Client) -> None:
            for i in names:
                node = core_pb2.Node()
                node.metadata.name = f"bare-{i:05d}"
                node.metadata.labels["kubernetes.io/hostname"] = node.metadata.name
                node.status.capacity.update({"cpu": "32", "memory": "128Gi", "pods": "110"})
                node.status.allocatable.update(node.status.capacity)
                node.status.conditions.add(type="Ready", status="True", reason="KubeletReady")
                await api.nodes.create(node)

        await asyncio.gather(*(worker(c) for c in clients for _ in range(IN_FLIGHT)))
    finally:
        for api in clients:
            await api.close()


def node_ready(node: core_pb2.Node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


async def wait_nodes(
    api: Client, count: int, within: float, hollow: subprocess.Popen[bytes]
) -> float:
    """Seconds until `count` Nodes are Ready, by list-then-watch (polling full
    lists of thousands of Nodes would load the master it is waiting for)."""
    start = time.monotonic()
    ready: set[str] = set()

    async def follow() -> None:
        listed = await api.nodes.list(page_size=1000)
        ready.update(n.metadata.name for n in listed.items if node_ready(n))
        if len(ready) >= count:
            return
        async for event in api.nodes.watch(resource_version=listed.resource_version):
            if event.type == "BOOKMARK":
                continue
            if event.type != "DELETED" and node_ready(event.object):
                ready.add(event.object.metadata.name)
            else:
                ready.discard(event.object.metadata.name)
            if len(ready) >= count:
                return

    task = asyncio.create_task(follow())
    try:
        while not task.done():
            if hollow.poll() is not None:
                raise RuntimeError(f"hollow nodes exited with {hollow.returncode}")
            if time.monotonic() - start > within:
                raise TimeoutError(f"{len(ready)} of {count} nodes Ready after {within:.0f} s")
            await asyncio.wait({task}, timeout=1.0)
        await task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return time.monotonic() - start


RETRYABLE = {
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
retries = 0


async def create_pod(client: Client, name: str) -> None:
    """Create, retrying transient failures (counted); ALREADY_EXISTS after a retry
    means the earlier attempt went through."""
    global retries
    for attempt in range(5):
        try:
            await client.pods.create(make_pod(name))
            return
        except grpc.aio.AioRpcError as exc:
            if attempt and exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                return
            if exc.code() not in RETRYABLE or attempt == 4:
                raise
            retries += 1
            print(f"create {name}: {exc.code().name} {exc.details()}; retrying", file=sys.stderr)
            await asyncio.sleep(0.5)


async def measure(address: str, pods: int) -> dict[str, float]:
    global retries
    retries = 0
    created: dict[str, float] = {}
    bound: dict[str, float] = {}
    all_bound = asyncio.Event()
    async with Client(address, timeout=120) as api:
        # List, then watch from the list's version: nothing is missed in between.
        listed = await api.pods.list(NAMESPACE)
        watching = asyncio.Event()

        async def watch() -> None:
            stream = api.pods.watch(NAMESPACE, resource_version=listed.resource_version)
            watching.set()
            async for event in stream:
                pod = event.object
                if event.type == "BOOKMARK" or not pod.spec.node_name:
                    continue
                if pod.metadata.name not in bound:
                    bound[pod.metadata.name] = time.monotonic()
                    if len(bound) == pods:
                        all_bound.set()
                        return

        watcher = asyncio.create_task(watch())
        await watching.wait()
        await asyncio.sleep(0.5)  # let the watch call reach the server
        clients = [Client(address, timeout=120) for _ in range(CHANNELS)]
        try:
            next_index = iter(range(pods))

            async def worker(client: Client) -> None:
                for i in next_index:
                    name = f"p-{i:05d}"
                    created[name] = time.monotonic()
                    await create_pod(client, name)

            start = time.monotonic()
            await asyncio.gather(*(worker(c) for c in clients for _ in range(IN_FLIGHT)))
            created_in = time.monotonic() - start
            await asyncio.wait_for(all_bound.wait(), 1800)
            total = time.monotonic() - start
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            for client in clients:
                await client.close()
    latencies = [bound[n] - created[n] for n in created]
    binds = sorted(bound.values())
    return {
        "create_rate": pods / created_in,
        "created_in": created_in,
        "total": total,
        "e2e_rate": pods / total,
        "bind_span": binds[-1] - binds[0],
        "scheduler_rate": (pods - 1) / max(binds[-1] - binds[0], 1e-9),
        "first_bind": binds[0] - start,
        "p50": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99),
        "retries": retries,
    }


async def run(nodes: int, pods: int, bare: bool, console: Console) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="kubeling-bench-") as tmp:
        data = Path(tmp)
        master = MasterProcess(
            data / "master",
            None,
            "--controllers", "scheduler", "--log-level", "warning",
            # Every hollow kubelet connects from this machine's one address.
            "--max-watches-per-client", "0", "--max-requests-inflight", "0",
        )  # fmt: skip
        master.start()
        hollow: subprocess.Popen[bytes] | None = None
        try:
            console.print(f"[{nodes:,} nodes] master pid {master.process.pid}", end=" ")  # type: ignore[union-attr]
            start = time.monotonic()
            if bare:
                console.print("; creating bare Ready nodes")
                await create_bare_nodes(master.address, nodes)
                registered = time.monotonic() - start
            else:
                hollow = start_hollow(master.address, nodes, data)
                console.print(f"hollow pid {hollow.pid}; waiting for Ready nodes")
                async with Client(master.address, timeout=120) as api:
                    registered = await wait_nodes(api, nodes, max(120.0, nodes * 0.1), hollow)
            console.print(f"[{nodes:,} nodes] all Ready after {registered:.1f} s; creating pods")
            result = await measure(master.address, pods)
            result["registered"] = registered
            return result
        except BaseException:
            for name in ("master/master.log", "hollow.log"):
                path = data / name
                if path.exists():
                    tail = path.read_text(errors="replace").splitlines()[-40:]
                    print(f"--- last lines of {name}:", *tail, sep="\n", file=sys.stderr)
            raise
        finally:
            if hollow is not None:
                stop_process(hollow, grace=60)
            master.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", default="1000,5000", help="comma list of node counts")
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument(
        "--bare-nodes",
        action="store_true",
        help="Ready Node objects without kubelets instead of hollow nodes (scheduler alone)",
    )
    parser.add_argument("--hollow-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--master", help=argparse.SUPPRESS)
    parser.add_argument("--log-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hollow_child:
        setup_logging("warning")
        asyncio.run(hollow_main(args.master, int(args.nodes), args.log_dir))
        return

    console = Console()
    counts = [int(n) for n in args.nodes.split(",")]
    results = [asyncio.run(run(count, args.pods, args.bare_nodes, console)) for count in counts]
    kind = "bare Node objects (no kubelets)" if args.bare_nodes else "hollow nodes"
    table = Table(title=f"scheduler: {args.pods:,} pods onto {kind}, through the API")
    table.add_column("measure")
    for count in counts:
        table.add_column(f"{count:,} nodes", justify="right")
    rows = (
        ("nodes Ready after", lambda r: f"{r['registered']:.1f} s"),
        ("pods created/s", lambda r: f"{r['create_rate']:,.0f}"),
        ("first create → all bound", lambda r: f"{r['total']:.1f} s"),
        ("end-to-end pods bound/s", lambda r: f"{r['e2e_rate']:,.0f}"),
        ("scheduler binds/s (first → last bind)", lambda r: f"{r['scheduler_rate']:,.0f}"),
        ("create → bound p50", lambda r: f"{r['p50']:.2f} s"),
        ("create → bound p99", lambda r: f"{r['p99']:.2f} s"),
        ("create retries (CANCELLED/UNAVAILABLE)", lambda r: f"{r['retries']:,.0f}"),
    )
    for label, cell in rows:
        table.add_row(label, *(cell(r) for r in results))
    console.print(table)
    console.print(
        f"creates: {CHANNELS} channels x {IN_FLIGHT} in flight; "
        "goal: ≥ 1,000 pods/s scheduled at 5,000 nodes (kube-scheduler CI floor 680 to 810)"
    )


if __name__ == "__main__":
    main()
