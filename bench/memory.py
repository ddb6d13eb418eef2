"""Master memory with 10,000 pods and 50,000 events, before and after --event-ttl
expires the events. Starts its own master process on loopback (no controllers) and
reads its resident set size (VmRSS) from /proc at each step.

    python bench/memory.py [--pods 10000] [--events 50000] [--ttl 240] [--clients 16]

The TTL must outlast writing the events (the first ones would expire while the
last are still written): the run says so if it did not.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.processes import MasterProcess

from kubeling.client import Client
from kubeling.v1 import core_pb2

NAMESPACE = "memory-bench"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def make_pod(i: int) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = f"pod-{i:05}"
    pod.metadata.namespace = NAMESPACE
    pod.metadata.labels["app"] = f"app-{i % 100}"
    container = pod.spec.containers.add(name="main", image="busybox:1.36")
    container.command.extend(["sleep", "3600"])
    container.resources.requests["cpu"] = "100m"
    container.resources.requests["memory"] = "64Mi"
    return pod


def make_event(i: int, pods: int) -> core_pb2.Event:
    """An Event as the kubelet writes them, about one of the pods."""
    pod = i % pods
    event = core_pb2.Event(
        reason="Pulled",
        type="Normal",
        message=f'Container image "busybox:1.36" already present on machine ({i})',
        count=1,
        source=core_pb2.EventSource(component="kubelet", host=f"node-{pod % 50}"),
        reporting_component="kubelet",
        reporting_instance=f"node-{pod % 50}",
    )
    event.metadata.name = f"pod-{pod:05}.{i:x}"
    event.metadata.namespace = NAMESPACE
    ref = event.involved_object
    ref.kind, ref.api_version, ref.namespace, ref.name = "Pod", "v1", NAMESPACE, f"pod-{pod:05}"
    now = time.time()
    event.first_timestamp.FromNanoseconds(int(now * 1e9))
    event.last_timestamp.FromNanoseconds(int(now * 1e9))
    return event


async def write_all(
    clients: list[Client], count: int, write: Callable[[Client, int], Awaitable[object]]
) -> float:
    """Write `count` objects from all clients at once; seconds taken."""
    numbers: Iterator[int] = iter(range(count))

    async def worker(api: Client) -> None:
        for i in numbers:  # shared: each number is taken by one worker
            await write(api, i)

    start = time.perf_counter()
    await asyncio.gather(*(worker(api) for api in clients))
    return time.perf_counter() - start


async def count_events(api: Client) -> int:
    return len((await api.events.list(NAMESPACE)).items)


async def any_event(api: Client) -> bool:
    """Cheaper than a count while polling (one item on the wire, not 50,000)."""
    return bool((await api.events.list_page(NAMESPACE, limit=1)).items)


async def run(args: argparse.Namespace) -> Table:
    with tempfile.TemporaryDirectory(prefix="kubeling-memory-") as data:
        master = MasterProcess(
            Path(data), None, "--controllers=", "--event-ttl", str(args.ttl)
        ).start()
        try:
            assert master.process is not None
            pid = master.process.pid
            clients = [Client(master.address, timeout=60) for _ in range(args.clients)]
            rows: list[tuple[str, float, str]] = [("master started, empty", rss_mib(pid), "")]
            try:
                api = clients[0]
                await api.namespaces.create(core_pb2.Namespace(metadata={"name": NAMESPACE}))
                took = await write_all(clients, args.pods, lambda c, i: c.pods.create(make_pod(i)))
                rows.append((f"+ {args.pods:,} pods", rss_mib(pid), f"written in {took:.0f} s"))
                first_event = time.monotonic()
                took = await write_all(
                    clients, args.events, lambda c, i: c.events.create(make_event(i, args.pods))
                )
                held = await count_events(api)
                if held < args.events:
                    raise SystemExit(
                        f"only {held} of {args.events} events left when the last was written "
                        f"({took:.0f} s): use a --ttl longer than that"
                    )
                rows.append((f"+ {args.events:,} events", rss_mib(pid), f"written in {took:.0f} s"))
                # Wait for the TTL, then for the store to be empty of events.
                for tick in itertools.count():
                    if not await any_event(api):
                        break
                    if tick % 30 == 0:
                        waited = time.monotonic() - first_event
                        print(f"  waiting for the TTL, {waited:.0f} s after the first write")
                    await asyncio.sleep(1.0)
                gone = time.monotonic() - first_event
                pods = len((await api.pods.list(NAMESPACE)).items)
                rows.append(
                    (
                        f"events expired (TTL {args.ttl:.0f} s), {pods:,} pods left",
                        rss_mib(pid),
                        f"all gone {gone:.0f} s after the first write",
                    )
                )
            finally:
                for client in clients:
                    await client.close()
        finally:
            master.stop()
        # The same data in a fresh process: what 10,000 pods cost without the
        # allocator's leftovers from the events.
        fresh = MasterProcess(Path(data), None, "--controllers=").start()
        try:
            assert fresh.process is not None
            rows.append(("fresh master on the same data", rss_mib(fresh.process.pid), ""))
        finally:
            fresh.stop()
    table = Table(title="kubeling-master resident memory (VmRSS)")
    table.add_column("state")
    table.add_column("RSS MiB", justify="right")
    table.add_column("note")
    for state, rss, note in rows:
        table.add_row(state, f"{rss:.0f}", note)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--ttl", type=float, default=240.0, help="the master's --event-ttl, s")
    parser.add_argument("--clients", type=int, default=16, help="concurrent writers")
    args = parser.parse_args()
    Console().print(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
