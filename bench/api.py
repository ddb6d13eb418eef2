"""API server benchmark: the SQLite store and the etcd store side by side, and one,
two and three masters sharing one etcd, each beside the raw cost underneath it.

    python bench/api.py [--quick] [--creates 3000] [--watchers 100] [--watch-writes 300]

What it runs, all on loopback on this machine, in one process tree it cleans up:
- a master on SQLite (its own data dir, the default store);
- one etcd member (tests/support/etcd.py) and 1, 2, 3 masters on it (`--store
  etcd://... --etcd-prefix P`, a fresh prefix per configuration, `--insecure` on
  loopback, no controllers). Clients are spread round-robin over the masters.

What it measures:
- creates/s of a Pod with 1 and with 8 clients (each client one connection, one
  create in flight);
- watch latency: 100 watchers on one namespace, a writer creating 50 Pods/s; the
  latency of an event is receipt time minus the time before its create was sent
  (both clocks are this process's). With several masters the watchers are on a
  master the writes do NOT go through, so the latency includes etcd's watch to
  another master.

The floors, measured in the same run on the same disk with the stored Pod's own
bytes (the first create's reply, as the store encodes it), each just before the
configuration it is the floor of (a shared machine's load drifts; an adjacent floor
keeps the ratio honest):
- SQLite: the store's schema and durability (WAL, synchronous=FULL), each write the
  rows the store writes (object, log entry, revision); one transaction per write
  (the floor of 1 client) and 8 writes per transaction (8 clients: the store commits
  the writes that arrived meanwhile in one transaction, at most 8 here);
- etcd: KV.Txn `If mod_revision == 0 Then put` (what a create is) through
  kubeling's own stubs on one channel, from 1 and from 8 concurrent writers; and a
  single raw etcd watch on a prefix while one writer puts 50 values/s. The floor
  includes Python's gRPC client, as the master's store does.

`--profile sqlite|etcd` instead runs 8 clients against a master inside this process
under cProfile and prints the top of the profile.

The ratio columns are ours / floor: the share of the raw rate the API keeps (for
rates), or how many times the raw latency it takes (for latencies).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import operator
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.etcd import EtcdCluster, running_etcd
from tests.support.processes import MasterProcess

from kubeling.client import Client
from kubeling.etcdpb import etcd_pb2, etcd_pb2_grpc
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Latency:
    values: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.values)

    @property
    def p99(self) -> float:
        return percentile(self.values, 0.99)


# ------------------------------------------------------------------ through the API


async def make_namespace(addresses: list[str], namespace: str) -> None:
    """Create `namespace` through the first master and wait until every master
    reads it (a create through another master checks that its namespace exists)."""
    async with Client(addresses[0]) as api:
        await api.namespaces.create(core_pb2.Namespace(metadata={"name": namespace}))
    for address in addresses[1:]:
        async with Client(address) as api:
            for _ in range(100):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await api.namespaces.get(namespace)
                    break
                await asyncio.sleep(0.05)


async def stored_pod(address: str) -> bytes:
    """The bytes the store keeps for one bench Pod (defaults, uid, timestamps set)."""
    await make_namespace([address], "bench-size")
    async with Client(address) as api:
        made = await api.pods.create(make_pod("size", "bench-size"))
    return made.SerializeToString(deterministic=True)


async def creates_per_second(addresses: list[str], clients: int, total: int) -> float:
    namespace = f"bench-{clients}-{uuid.uuid4().hex[:6]}"
    await make_namespace(addresses, namespace)
    # Client i talks to master i mod len(addresses).
    connections = [Client(a) for a in itertools.islice(itertools.cycle(addresses), clients)]
    try:
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


async def watch_latency(
    write_to: str, watch_on: str, watchers: int, writes: int, rate: float
) -> Latency:
    namespace = f"watch-{uuid.uuid4().hex[:6]}"
    await make_namespace([write_to, watch_on] if watch_on != write_to else [write_to], namespace)
    result = Latency()
    async with Client(write_to) as writer, Client(watch_on) as api:
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
                result.values.append(time.time() - sent)
                seen += 1
                if seen == writes:
                    return

        tasks = [asyncio.create_task(watcher()) for _ in range(watchers)]
        try:
            await asyncio.wait_for(all_ready.wait(), 30)
            for i in range(writes):
                pod = make_pod(f"w-{i}", namespace)
                pod.metadata.annotations[SENT_AT] = repr(time.time())
                await writer.pods.create(pod)
                await asyncio.sleep(1 / rate)
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
        finally:
            for task in tasks:
                task.cancel()
    return result


@dataclass
class MasterResults:
    one: float | None  # creates/s with 1 client (measured with one master only)
    eight: float
    watch: Latency


async def measure(
    addresses: list[str], args: argparse.Namespace, one_client: bool
) -> MasterResults:
    one = await creates_per_second(addresses, 1, args.creates // 2) if one_client else None
    eight = await creates_per_second(addresses, 8, args.creates)
    # Watch a master the writes do not go through, when there is one.
    watch = await watch_latency(
        addresses[0], addresses[-1], args.watchers, args.watch_writes, args.watch_rate
    )
    return MasterResults(one, eight, watch)


@contextlib.contextmanager
def masters(root: Path, count: int, *store: str) -> Iterator[list[str]]:
    """`count` master processes (own data dir and port each), stopped by PID."""
    started: list[MasterProcess] = []
    try:
        for i in range(count):
            master = MasterProcess(root / f"master{i}", None, "--controllers=", *store)
            started.append(master)
            try:
                master.start()
            except (RuntimeError, TimeoutError):
                # Its data dir goes with the temp dir: show why it did not serve.
                print(master.log()[-3000:], file=sys.stderr)
                raise
        yield [m.address for m in started]
    finally:
        for master in started:
            master.stop()


# ------------------------------------------------------------------ the floors


_SCHEMA = """
CREATE TABLE objects (key TEXT PRIMARY KEY, mod_rev INTEGER NOT NULL, value BLOB NOT NULL)
    WITHOUT ROWID;
CREATE TABLE log (rev INTEGER PRIMARY KEY, type INTEGER NOT NULL, key TEXT NOT NULL,
    value BLOB NOT NULL, prev BLOB);
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def sqlite_insert_rate(path: Path, value: bytes, total: int, group: int) -> float:
    """Raw SQLite inserts/s with the store's durability and rows, `group` per
    transaction (store/sqlite.py: _open_sync's pragmas, _commit_sync's writes)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        rev = 0
        start = time.perf_counter()
        for _ in range(total // group):
            db.execute("BEGIN IMMEDIATE")
            for _ in range(group):
                rev += 1
                key = f"/pods/bench/p-{rev}"
                db.execute(
                    "INSERT OR REPLACE INTO objects (key, mod_rev, value) VALUES (?, ?, ?)",
                    (key, rev, value),
                )
                db.execute(
                    "INSERT INTO log (rev, type, key, value, prev) VALUES (?, ?, ?, ?, ?)",
                    (rev, 0, key, value, None),
                )
            db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('rev', ?)", (rev,))
            db.execute("COMMIT")
        return rev / (time.perf_counter() - start)
    finally:
        db.close()


def _create_txn(key: bytes, value: bytes) -> etcd_pb2.TxnRequest:
    """A create as the etcd store sends it: put only if the key does not exist."""
    return etcd_pb2.TxnRequest(
        compare=[
            etcd_pb2.Compare(
                key=key,
                target=etcd_pb2.Compare.MOD,
                result=etcd_pb2.Compare.EQUAL,
                mod_revision=0,
            )
        ],
        success=[etcd_pb2.RequestOp(request_put=etcd_pb2.PutRequest(key=key, value=value))],
    )


async def etcd_put_rate(endpoint: str, value: bytes, writers: int, total: int) -> float:
    """Raw etcd creates/s (Txn with a put) from `writers` concurrent callers."""
    prefix = f"/bench-floor-{uuid.uuid4().hex[:6]}"
    async with grpc.aio.insecure_channel(endpoint) as channel:
        kv = etcd_pb2_grpc.KVStub(channel)
        await kv.Txn(_create_txn(f"{prefix}/warm".encode(), value))
        per_writer = total // writers

        async def run(writer: int) -> None:
            for i in range(per_writer):
                reply = await kv.Txn(_create_txn(f"{prefix}/{writer}/{i}".encode(), value))
                assert reply.succeeded

        start = time.perf_counter()
        await asyncio.gather(*(run(w) for w in range(writers)))
        return per_writer * writers / (time.perf_counter() - start)


async def etcd_watch_latency(endpoint: str, value: bytes, writes: int, rate: float) -> Latency:
    """One raw etcd watch on a prefix; the latency of each put from before it is
    sent until its event arrives."""
    prefix = f"/bench-watch-{uuid.uuid4().hex[:6]}".encode()
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    sent: dict[bytes, float] = {}
    result = Latency()
    requests: asyncio.Queue[etcd_pb2.WatchRequest | None] = asyncio.Queue()
    await requests.put(
        etcd_pb2.WatchRequest(create_request=etcd_pb2.WatchCreateRequest(key=prefix, range_end=end))
    )

    async def outgoing() -> AsyncIterator[etcd_pb2.WatchRequest]:
        while (request := await requests.get()) is not None:
            yield request

    async with grpc.aio.insecure_channel(endpoint) as channel:
        kv = etcd_pb2_grpc.KVStub(channel)
        call = etcd_pb2_grpc.WatchStub(channel).Watch(outgoing())
        try:
            created = await call.read()
            assert created.created, created

            async def receive() -> None:
                while len(result.values) < writes:
                    reply = await call.read()
                    now = time.time()
                    for event in reply.events:
                        result.values.append(now - sent[event.kv.key])

            receiving = asyncio.create_task(receive())
            for i in range(writes):
                key = prefix + f"/{i}".encode()
                sent[key] = time.time()
                await kv.Txn(_create_txn(key, value))
                await asyncio.sleep(1 / rate)
            await asyncio.wait_for(receiving, 30)
        finally:
            await requests.put(None)
            call.cancel()
    return result


# ------------------------------------------------------------------ the runs


@dataclass
class Floor:
    """The raw cost underneath one configuration, measured just before it."""

    one: float | None  # 1 writer (SQLite: 1 write per transaction)
    eight: float  # 8 writers (SQLite: 8 writes per transaction)
    watch: Latency | None = None  # one raw etcd watch


@dataclass
class Measured:
    ours: MasterResults
    floor: Floor


async def sqlite_side(args: argparse.Namespace, root: Path) -> tuple[bytes, Measured]:
    """The SQLite master, its floor measured on the same disk just before."""
    with masters(root / "sqlite", 1) as addresses:
        value = await stored_pod(addresses[0])
        floor = Floor(
            sqlite_insert_rate(root / "floor-1.db", value, args.creates // 4, 1),
            sqlite_insert_rate(root / "floor-8.db", value, args.creates * 2, 8),
        )
        return value, Measured(await measure(addresses, args, one_client=True), floor)


async def etcd_side(
    args: argparse.Namespace, root: Path, cluster: EtcdCluster, value: bytes
) -> dict[int, Measured]:
    """1, 2, 3 masters on `cluster`, each configuration after its own floor (the
    machine may be shared: an adjacent floor keeps the ratio honest)."""
    endpoint = cluster.endpoint(0)
    results: dict[int, Measured] = {}
    for count in args.masters:
        Console(stderr=True).log(f"{count} master(s) on etcd")
        floor = Floor(
            await etcd_put_rate(endpoint, value, 1, args.creates // 2) if count == 1 else None,
            await etcd_put_rate(endpoint, value, 8, args.creates),
            await etcd_watch_latency(endpoint, value, args.watch_writes, args.watch_rate),
        )
        # A fresh prefix: each configuration starts from an empty cluster.
        store = (
            f"--store=etcd://{cluster.endpoints}",
            f"--etcd-prefix=/bench-{count}-{uuid.uuid4().hex[:6]}",
        )
        with masters(root / f"etcd-{count}", count, *store) as addresses:
            ours = await measure(addresses, args, one_client=count == 1)
        results[count] = Measured(ours, floor)
    return results


# ------------------------------------------------------------------ the tables


def rate(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def share(ours: float | None, floor: float | None) -> str:
    return "" if ours is None or floor is None else f"{ours / floor:.2f}"


def times(ours: float, floor: float) -> str:
    return f"{ours / floor:.1f}x"


def print_tables(
    args: argparse.Namespace,
    value_size: int,
    sqlite: Measured,
    etcd: dict[int, Measured],
    load: tuple[float, float],
) -> None:
    # Wide enough for the tables when printed to a file or a pipe (rich's default: 80).
    console = Console(width=None if sys.stdout.isatty() else 132)
    one = etcd[1]
    watch_floor = one.floor.watch
    assert watch_floor is not None
    creates = Table(
        title=f"creates/s of a Pod ({value_size} bytes stored): SQLite master vs etcd "
        "master (1 member), each beside its floor",
        caption="raw SQLite: the store's rows, WAL + synchronous=FULL, 1 write per "
        "transaction for 1 client, 8 per transaction for 8; raw etcd: Txn "
        "(mod_revision == 0 → put) from 1 and 8 concurrent writers on one channel",
    )
    for name in (
        "clients",
        "SQLite master",
        "raw SQLite",
        "ratio",
        "etcd master",
        "raw etcd Txn put",
        "ratio",
    ):
        creates.add_column(name, justify="right")
    creates.add_row(
        "1",
        rate(sqlite.ours.one),
        rate(sqlite.floor.one),
        share(sqlite.ours.one, sqlite.floor.one),
        rate(one.ours.one),
        rate(one.floor.one),
        share(one.ours.one, one.floor.one),
    )
    creates.add_row(
        "8",
        rate(sqlite.ours.eight),
        rate(sqlite.floor.eight),
        share(sqlite.ours.eight, sqlite.floor.eight),
        rate(one.ours.eight),
        rate(one.floor.eight),
        share(one.ours.eight, one.floor.eight),
    )
    console.print(creates)

    watch = Table(
        title=f"watch latency: {args.watchers} watchers, {args.watch_writes} creates at "
        f"{args.watch_rate:.0f}/s",
        caption="raw etcd watch: one watch on a prefix, puts at the same rate, "
        "from before the put is sent to the event's arrival",
    )
    for name in ("", "SQLite master", "etcd master", "raw etcd watch", "ratio etcd/raw"):
        watch.add_column(name, justify="right")
    for name in ("p50", "p99"):
        get = operator.attrgetter(name)
        watch.add_row(
            name,
            ms(get(sqlite.ours.watch)),
            ms(get(one.ours.watch)),
            ms(get(watch_floor)),
            times(get(one.ours.watch), get(watch_floor)),
        )
    watch.add_row(
        "events",
        f"{len(sqlite.ours.watch.values):,}",
        f"{len(one.ours.watch.values):,}",
        f"{len(watch_floor.values):,}",
        "",
    )
    console.print(watch)

    several = Table(
        title="masters sharing one etcd member: 8 clients round-robin over the masters; "
        "watchers on the last master, writes through the first",
        caption="each row's raw etcd columns measured just before it, on the same etcd",
    )
    for name in (
        "masters",
        "creates/s",
        "raw etcd, 8 writers",
        "ratio",
        "watch p50",
        "watch p99",
        "raw watch p50 / p99",
        "ratio p99",
    ):
        several.add_column(name, justify="right")
    for count, measured in sorted(etcd.items()):
        ours, floor = measured.ours, measured.floor
        assert floor.watch is not None
        several.add_row(
            f"{count}" + (" (watched itself)" if count == 1 else ""),
            rate(ours.eight),
            rate(floor.eight),
            share(ours.eight, floor.eight),
            ms(ours.watch.p50),
            ms(ours.watch.p99),
            f"{ms(floor.watch.p50)} / {ms(floor.watch.p99)}",
            times(ours.watch.p99, floor.watch.p99),
        )
    console.print(several)
    console.print(
        f"load average (1 min) before {load[0]:.2f}, after {load[1]:.2f} on "
        f"{os.cpu_count()} CPUs: anything else running shares them"
    )


# ------------------------------------------------------------------ main


async def run(args: argparse.Namespace, root: Path) -> None:
    before = os.getloadavg()[0]
    Console(stderr=True).log("SQLite master")
    value, sqlite = await sqlite_side(args, root)
    with running_etcd(root / "etcd", members=1) as cluster:
        etcd = await etcd_side(args, root, cluster, value)
    print_tables(args, len(value), sqlite, etcd, (before, os.getloadavg()[0]))


async def profile(args: argparse.Namespace, root: Path) -> None:
    """8 clients creating Pods against a master in this process under cProfile (the
    clients are in the profile too: they share the event loop); prints the top."""
    import cProfile
    import pstats

    from tests.support.inprocess import in_process_master

    async def profiled(**config: str) -> None:
        async with in_process_master(root / "profiled", **config) as api:
            profiler = cProfile.Profile()
            profiler.enable()
            made = await creates_per_second([api.target], 8, args.creates)
            profiler.disable()
        Console().print(f"{args.profile}: {made:,.0f} creates/s with 8 clients, in-process")
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(25)

    if args.profile == "sqlite":
        await profiled()
    else:
        with running_etcd(root / "etcd", members=1) as cluster:
            await profiled(store=f"etcd://{cluster.endpoints}", etcd_prefix="/bench-profile")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--creates", type=int, default=3000, help="creates with 8 clients")
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--watch-writes", type=int, default=300)
    parser.add_argument("--watch-rate", type=float, default=50.0, help="writes per second")
    parser.add_argument(
        "--masters", type=int, nargs="+", default=[1, 2, 3], help="master counts on etcd"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument(
        "--profile",
        choices=["sqlite", "etcd"],
        help="instead: profile 8 clients creating against an in-process master on this store",
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where data dirs go (a real disk: fsync counts)"
    )
    args = parser.parse_args()
    if 1 not in args.masters:
        parser.error("--masters must include 1 (the etcd side of the first tables)")
    if args.quick:
        args.creates, args.watchers, args.watch_writes = 400, 20, 50
    with tempfile.TemporaryDirectory(prefix="kubeling-bench-", dir=args.dir) as root:
        asyncio.run((profile if args.profile else run)(args, Path(root)))


if __name__ == "__main__":
    main()
