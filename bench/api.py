"""API server benchmark: creates/s with 1 and 8 concurrent clients, and watch
delivery latency with 100 watchers. Starts its own master on loopback.

    python bench/api.py [--creates 3000] [--watchers 100] [--watch-writes 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.processes import MasterProcess

from kubeling.client import Client
from kubeling.v1 import core_pb2

SENT_AT = "bench.kubeling.io/sent-at"


def make_pod(name: str, namespace: str) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = namespace
    pod.metadata.labels["app"] = "bench"
    container = pod.spec.containers.add(name="main", image="busybox:1.36")
    container.resources.requests["cpu"] = "100m"
    container.resources.requests["memory"] = "64Mi"
    return pod


async def creates_per_second(address: str, clients: int, total: int, namespace: str) -> float:
    connections = [Client(address) for _ in range(clients)]
    try:
        await connections[0].namespaces.create(core_pb2.Namespace(metadata={"name": namespace}))
        per_client = total // clients

        async def run(index: int, api: Client) -> None:
            for i in range(per_client):
                await api.pods.create(make_pod(f"p-{index}-{i}", namespace))

        start = time.perf_counter()
        await asyncio.gather(*(run(i, api) for i, api in enumerate(connections)))
        elapsed = time.perf_counter() - start
        return per_client * clients / elapsed
    finally:
        for api in connections:
            await api.close()


async def watch_latency(address: str, watchers: int, writes: int, rate: float) -> list[float]:
    namespace = "watch-bench"
    latencies: list[float] = []
    async with Client(address) as api:
        await api.namespaces.create(core_pb2.Namespace(metadata={"name": namespace}))
        ready = 0
        all_ready = asyncio.Event()

        async def watcher() -> None:
            nonlocal ready
            seen = 0
            async for event in api.pods.watch(namespace):
                if event.type == "BOOKMARK" and "k8s.io/initial-events-end" in (
                    event.object.metadata.annotations
                ):
                    ready += 1
                    if ready == watchers:
                        all_ready.set()
                    continue
                if event.type != "ADDED":
                    continue
                sent = float(event.object.metadata.annotations[SENT_AT])
                latencies.append(time.time() - sent)
                seen += 1
                if seen == writes:
                    return

        tasks = [asyncio.create_task(watcher()) for _ in range(watchers)]
        await asyncio.wait_for(all_ready.wait(), 30)
        for i in range(writes):
            pod = make_pod(f"w-{i}", namespace)
            pod.metadata.annotations[SENT_AT] = repr(time.time())
            await api.pods.create(pod)
            await asyncio.sleep(1 / rate)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--creates", type=int, default=4000)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--watch-writes", type=int, default=300)
    parser.add_argument("--watch-rate", type=float, default=50.0, help="writes per second")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as data:
        master = MasterProcess(Path(data), None, "--controllers=").start()
        try:
            one = await creates_per_second(master.address, 1, args.creates // 2, "bench-1")
            eight = await creates_per_second(master.address, 8, args.creates, "bench-8")
            latencies = await watch_latency(
                master.address, args.watchers, args.watch_writes, args.watch_rate
            )
        finally:
            master.stop()

    table = Table(title="kubeling API server (SQLite store, synchronous=FULL)")
    table.add_column("measure")
    table.add_column("result", justify="right")
    table.add_column("goal", justify="right")
    table.add_row("creates/s, 1 client", f"{one:,.0f}", "")
    table.add_row("creates/s, 8 clients", f"{eight:,.0f}", "≥ 3,000")
    table.add_row(
        f"watch latency p50, {args.watchers} watchers",
        f"{statistics.median(latencies) * 1000:.1f} ms",
        "",
    )
    table.add_row(
        f"watch latency p99, {args.watchers} watchers",
        f"{percentile(latencies, 0.99) * 1000:.1f} ms",
        "≤ 50 ms",
    )
    table.add_row("watch events delivered", f"{len(latencies):,}", "")
    Console().print(table)


if __name__ == "__main__":
    asyncio.run(main())
