"""Scheduler throughput with hollow nodes, end to end through the API.

For each node count: a master process running only the scheduler, N hollow nodes
(real kubelets on the fake runtime) in a second process, then a burst of pods
created through the API; a watch records when each pod is bound.

    python bench/scheduler.py [--nodes 1000,5000] [--pods 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
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


def make_pod(name: str) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = "default"
    container = pod.spec.containers.add(name="main", image="busybox")
    container.resources.requests["cpu"] = "10m"
    container.resources.requests["memory"] = "16Mi"
    return pod


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def wait_nodes(api: Client, count: int, within: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        nodes = (await api.nodes.list()).items
        ready = [
            n
            for n in nodes
            if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
        ]
        if len(ready) >= count:
            return time.monotonic() - start
        await asyncio.sleep(1.0)
    raise TimeoutError(f"only some of {count} hollow nodes registered in {within}s")


async def run(nodes: int, pods: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as data:
        master = MasterProcess(Path(data) / "master", None, "--controllers", "scheduler").start()
        # Started once per run; the bench waits for it with asyncio afterwards.
        hollow = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "kubeling.kubelet.hollow", "--master", master.address,
             "--nodes", str(nodes), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=(Path(data) / "hollow.log").open("wb"),
            env={**os.environ},
        )  # fmt: skip
        try:
            async with Client(master.address, timeout=120) as api:
                registered = await wait_nodes(api, nodes, 600)
                created: dict[str, float] = {}
                bound: dict[str, float] = {}
                done = asyncio.Event()

                async def watch() -> None:
                    async for event in api.pods.watch("default"):
                        pod = event.object
                        if event.type != "BOOKMARK" and pod.spec.node_name:
                            bound.setdefault(pod.metadata.name, time.monotonic())
                            if len(bound) == pods:
                                done.set()
                                return

                watcher = asyncio.create_task(watch())
                await asyncio.sleep(0.5)
                clients = [Client(master.address, timeout=120) for _ in range(8)]
                start = time.monotonic()

                async def creator(index: int, client: Client) -> None:
                    for i in range(index, pods, len(clients)):
                        name = f"p-{i:05d}"
                        created[name] = time.monotonic()
                        await client.pods.create(make_pod(name))

                await asyncio.gather(*(creator(i, c) for i, c in enumerate(clients)))
                created_in = time.monotonic() - start
                await asyncio.wait_for(done.wait(), 900)
                total = time.monotonic() - start
                await watcher
                for client in clients:
                    await client.close()
        finally:
            hollow.terminate()
            try:
                hollow.wait(timeout=60)
            except subprocess.TimeoutExpired:
                hollow.kill()
                hollow.wait(timeout=30)
            master.stop()
    latencies = [bound[n] - created[n] for n in created]
    binds = sorted(bound.values())
    return {
        "registered": registered,
        "create_rate": pods / created_in,
        "total": total,
        "e2e_rate": pods / total,
        "scheduler_rate": pods / max(binds[-1] - binds[0], 1e-9),
        "p50": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", default="1000,5000")
    parser.add_argument("--pods", type=int, default=10_000)
    args = parser.parse_args()
    table = Table(title=f"scheduler: {args.pods:,} pods, hollow nodes, through the API")
    for column in (
        "nodes", "nodes ready after", "pods created/s", "create→all bound",
        "end-to-end pods/s", "binds/s (first→last bind)", "create→bound p50", "p99",
    ):  # fmt: skip
        table.add_column(column, justify="right")
    for count in (int(n) for n in args.nodes.split(",")):
        r = asyncio.run(run(count, args.pods))
        table.add_row(
            f"{count:,}", f"{r['registered']:.1f} s", f"{r['create_rate']:,.0f}",
            f"{r['total']:.1f} s", f"{r['e2e_rate']:,.0f}", f"{r['scheduler_rate']:,.0f}",
            f"{r['p50']:.2f} s", f"{r['p99']:.2f} s",
        )  # fmt: skip
    console = Console()
    console.print(table)
    console.print("goal: ≥ 1,000 pods/s at 5,000 nodes (kube-scheduler CI floor 680 to 810)")


if __name__ == "__main__":
    main()
