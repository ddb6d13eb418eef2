"""Pod start-up latency on one node with a real containerd.

Creates a burst of pods bound to one node (kubelet in this process, CRI to a
private containerd in its own network namespace, a real master process) and
measures create → Running as seen through a watch, plus where the time went.

    python bench/pod_startup.py [--pods 50]        (root; containerd installed)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.containerd import POD_CIDR, private_containerd, skip_reason
from tests.support.processes import MasterProcess

from kubeling.client import Client
from kubeling.cri.client import RuntimeClient
from kubeling.kubelet.kubelet import Kubelet, KubeletConfig
from kubeling.v1 import core_pb2

NODE = "bench-node"


def make_pod(name: str) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = "default"
    pod.spec.node_name = NODE
    pod.spec.termination_grace_period_seconds = 1
    pod.spec.containers.add(name="main", image="busybox", command=["sleep", "3600"])
    return pod


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(pods: int) -> None:
    with tempfile.TemporaryDirectory() as data, private_containerd() as node:
        master = MasterProcess(Path(data) / "master").start()
        runtime = RuntimeClient(node.endpoint)
        api = Client(master.address)
        kubelet = Kubelet(
            KubeletConfig(
                master=master.address,
                node_name=NODE,
                runtime_endpoint=node.endpoint,
                listen="127.0.0.1:0",
                node_ip="127.0.0.1",
                pod_cidr=POD_CIDR,
                pod_log_dir=node.base / "pods",
                relist_period=1.0,
            ),
            runtime,
            api,
        )
        try:
            await kubelet.start()
            created: dict[str, float] = {}
            running: dict[str, float] = {}
            uids: dict[str, str] = {}
            all_running = asyncio.Event()

            async def watch() -> None:
                async for event in api.pods.watch("default"):
                    pod = event.object
                    if event.type != "BOOKMARK" and pod.status.phase == "Running":
                        name = pod.metadata.name
                        running.setdefault(name, time.monotonic())
                        uids[name] = pod.metadata.uid
                        if len(running) == pods:
                            all_running.set()
                            return

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0.2)
            start = time.monotonic()

            async def create(i: int) -> None:
                name = f"burst-{i:03d}"
                created[name] = time.monotonic()
                await api.pods.create(make_pod(name))

            await asyncio.gather(*(create(i) for i in range(pods)))
            await asyncio.wait_for(all_running.wait(), 300)
            total = time.monotonic() - start
            await watcher
            latencies = [running[n] - created[n] for n in created]
            phases: dict[str, list[float]] = {
                "create → kubelet sync": [],
                "sandbox (RunPodSandbox)": [],
                "image (ImageStatus)": [],
                "containers (create+start)": [],
                "status posted (Running)": [],
            }
            for name, uid in uids.items():
                m = kubelet.syncer.milestones.get(uid, {})
                if len(m) < 5:
                    continue
                phases["create → kubelet sync"].append(m["first_sync"] - created[name])
                phases["sandbox (RunPodSandbox)"].append(m["sandbox"] - m["first_sync"])
                phases["image (ImageStatus)"].append(m["images"] - m["sandbox"])
                phases["containers (create+start)"].append(m["started"] - m["images"])
                phases["status posted (Running)"].append(m["running_posted"] - m["started"])
        finally:
            for i in range(pods):
                # Best effort: the containerd tear-down removes what is left.
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await api.pods.delete(f"burst-{i:03d}", "default", 0)
            await kubelet.stop()
            await runtime.close()
            await api.close()
            master.stop()

    table = Table(title=f"pod start-up: {pods} pods at once, one node, real containerd")
    table.add_column("measure")
    table.add_column("p50", justify="right")
    table.add_column("p90", justify="right")
    table.add_column("p99", justify="right")
    table.add_row(
        "create → Running (watch)",
        *(f"{pct(latencies, q):.3f} s" for q in (0.5, 0.9, 0.99)),
    )
    for label, values in phases.items():
        if values:
            table.add_row(f"  {label}", *(f"{pct(values, q):.3f} s" for q in (0.5, 0.9, 0.99)))
    console = Console()
    console.print(table)
    console.print(
        f"pods/s: {pods / total:.1f}   (all {pods} Running after {total:.2f} s; "
        f"mean {statistics.mean(latencies):.3f} s; goal p50 ≤ 0.5 s, p99 ≤ 1.5 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=50)
    args = parser.parse_args()
    reason = skip_reason()
    if reason:
        sys.exit(f"cannot run: {reason}")
    asyncio.run(run(args.pods))


if __name__ == "__main__":
    main()
