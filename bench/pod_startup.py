"""Pod start-up latency on one node with a real containerd, beside its floor.

The floor, measured first in the same run on the same containerd: the very
sandbox and container configs the kubelet would send (`kubelet/containers.py`),
made by direct CRI calls (RunPodSandbox, PodSandboxStatus for the IP,
CreateContainer, StartContainer) — one pod alone, then the burst at several
concurrencies, the best of which is the floor. Everything the floor made is removed
before the kubelet starts.

Then the kubelet (in this process, CRI to a private containerd in its own network
namespace, a real master process): one pod alone, then a burst of pods bound to
the node; create → Running as seen through a watch, and where the time went.
Pods use `imagePullPolicy: IfNotPresent` (the image is imported beforehand, as the
floor uses it): with `Always` every pod would also try a pull, which fails at once
in the namespace without a route.

    python bench/pod_startup.py [--pods 50] [--floor-concurrency 4,8,16]   (root)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.containerd import POD_CIDR, private_containerd, skip_reason
from tests.support.processes import MasterProcess

from kubeling.client import Client
from kubeling.cri.client import RuntimeClient
from kubeling.kubelet.containers import container_config, sandbox_config
from kubeling.kubelet.kubelet import Kubelet, KubeletConfig
from kubeling.v1 import core_pb2

NODE = "bench-node"


def make_pod(name: str) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = "default"
    pod.spec.node_name = NODE
    pod.spec.termination_grace_period_seconds = 1
    pod.spec.containers.add(
        name="main", image="busybox", command=["sleep", "3600"], image_pull_policy="IfNotPresent"
    )
    return pod


@dataclass
class FloorRun:
    concurrency: int
    total: float  # first call to the last container started
    latencies: list[float]  # per pod: burst start -> its container started


async def floor_burst(
    runtime: RuntimeClient, log_root: Path, image_ref: str, pods: int, concurrency: int, tag: str
) -> FloorRun:
    """`pods` pods by direct CRI calls, at most `concurrency` at once; removed after."""
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    sandboxes: list[str] = []
    start = time.monotonic()

    async def one(i: int) -> None:
        pod = make_pod(f"floor-{tag}-{i:03d}")
        pod.metadata.uid = str(uuid.uuid4())
        async with slots:
            config = sandbox_config(pod, log_root, 0)
            sandbox = await runtime.run_pod_sandbox(config)
            sandboxes.append(sandbox)
            status = await runtime.pod_sandbox_status(sandbox)
            container = container_config(
                pod, pod.spec.containers[0], 0, image_ref, status.status.network.ip, "127.0.0.1"
            )
            await runtime.start_container(
                await runtime.create_container(sandbox, container, config)
            )
        latencies.append(time.monotonic() - start)

    try:
        await asyncio.gather(*(one(i) for i in range(pods)))
        total = time.monotonic() - start
    finally:
        removing = asyncio.Semaphore(8)

        async def remove(sandbox: str) -> None:
            async with removing:
                await runtime.stop_pod_sandbox(sandbox)
                await runtime.remove_pod_sandbox(sandbox)

        await asyncio.gather(*(remove(s) for s in sandboxes))
    return FloorRun(concurrency, total, latencies)


async def measure_floor(
    runtime: RuntimeClient, log_root: Path, pods: int, concurrencies: list[int]
) -> tuple[float, list[FloorRun]]:
    """(one pod alone: median of 3, the burst at each concurrency)."""
    image = await runtime.image_status("busybox")
    if image is None:
        raise SystemExit("busybox is not in the runtime: the image import failed")
    await floor_burst(runtime, log_root, image.id, 1, 1, "warm")
    alone = sorted(
        [(await floor_burst(runtime, log_root, image.id, 1, 1, f"one{i}")).total for i in range(3)]
    )[1]
    bursts = [
        await floor_burst(runtime, log_root, image.id, pods, c, f"c{c}") for c in concurrencies
    ]
    return alone, bursts


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_pod(api: Client, name: str) -> float:
    """create -> Running through a watch, for one pod alone (deleted after)."""
    events = api.pods.watch("default", field_selector=f"metadata.name={name}")
    stream = aiter(events)
    await anext(stream)  # the initial-events-end bookmark: the watch is open
    start = time.monotonic()
    await api.pods.create(make_pod(name))
    async for event in stream:
        if event.type != "BOOKMARK" and event.object.status.phase == "Running":
            break
    took = time.monotonic() - start
    await events.aclose()  # type: ignore[attr-defined]
    await api.pods.delete(name, "default", 0)
    return took


async def run(pods: int, concurrencies: list[int]) -> None:
    with tempfile.TemporaryDirectory() as data, private_containerd() as node:
        master = MasterProcess(Path(data) / "master").start()
        runtime = RuntimeClient(node.endpoint)
        api = Client(master.address)
        floor_alone, floor_runs = await measure_floor(
            runtime, node.base / "floor-pods", pods, concurrencies
        )
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
            await one_pod(api, "warm-up")
            alone = sorted([await one_pod(api, f"alone-{i}") for i in range(3)])[1]
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

    best = min(floor_runs, key=lambda r: r.total)
    floor_rate = pods / best.total
    summary = Table(
        title=f"pod start-up, one node, real containerd: kubeling beside raw CRI calls "
        f"(floor: best of concurrency {', '.join(str(r.concurrency) for r in floor_runs)})"
    )
    for column in ("measure", "kubeling", "floor (raw CRI)", "ratio", "goal"):
        summary.add_column(column, justify="left" if column == "measure" else "right")
    summary.add_row(
        "one pod alone, create → Running", f"{alone:.3f} s", f"{floor_alone:.3f} s",
        f"{alone / floor_alone:.2f}x", "≤ 0.25 s",
    )  # fmt: skip
    summary.add_row(
        f"{pods} at once, all Running", f"{total:.2f} s", f"{best.total:.2f} s",
        f"{total / best.total:.2f}x", "≤ 1.1x floor",
    )  # fmt: skip
    summary.add_row(
        f"{pods} at once, pods/s", f"{pods / total:.1f}", f"{floor_rate:.1f}",
        f"{(pods / total) / floor_rate:.2f}x", "",
    )  # fmt: skip
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        summary.add_row(
            f"{pods} at once, {label} latency", f"{pct(latencies, q):.3f} s",
            f"{pct(best.latencies, q):.3f} s",
            f"{pct(latencies, q) / pct(best.latencies, q):.2f}x",
            "p99 ≤ 5 s (Kubernetes SLO)" if label == "p99" else "",
        )  # fmt: skip
    floors = Table(title="the floor at each concurrency")
    for column in ("concurrency", "all started", "pods/s", "p50", "p99"):
        floors.add_column(column, justify="right")
    for r in floor_runs:
        floors.add_row(
            str(r.concurrency), f"{r.total:.2f} s", f"{pods / r.total:.1f}",
            f"{pct(r.latencies, 0.5):.3f} s", f"{pct(r.latencies, 0.99):.3f} s",
        )  # fmt: skip
    table = Table(title=f"where the kubelet's time went ({pods} pods at once)")
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
    console.print(summary)
    console.print(floors)
    console.print(table)
    console.print(f"kubelet start slots: {kubelet.syncer.parallel_starts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument(
        "--floor-concurrency",
        default="4,8,16",
        help="concurrencies the raw CRI burst is measured at (the best is the floor)",
    )
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.floor_concurrency.split(",") if c.strip()]
    reason = skip_reason()
    if reason:
        sys.exit(f"cannot run: {reason}")
    asyncio.run(run(args.pods, concurrencies))


if __name__ == "__main__":
    main()
