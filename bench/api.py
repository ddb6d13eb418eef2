"""API server benchmark: the SQLite store and the etcd store side by side, and one,
two and three masters sharing one etcd, each beside the raw cost underneath it and
the goal it is judged by (issue 16).

    python bench/api.py [--quick] [--creates 3000] [--watchers 1000] [--watch-writes 300]
                        [--watch-processes 4] [--masters 1 2 3]

What it runs, all on loopback on this machine, in one process tree it cleans up:
- a master on SQLite (its own data dir, the default store);
- one etcd member (tests/support/etcd.py) and 1, 2, 3 masters on it (`--store
  etcd://... --etcd-prefix P`, a fresh prefix per configuration, `--insecure` on
  loopback, no controllers). Clients are spread round-robin over the masters;
- the grpc.aio floor server (floor_server), a child process.

What it measures:
- creates/s of a Pod with 1 and with 8 clients (each client one connection, one
  create in flight); goal with 8 clients on SQLite: ≥ 3,000/s;
- watch latency: 1,000 watchers on one namespace, a writer creating 50 Pods/s on a
  fixed timetable (open loop: a master that falls behind does not slow the writer
  down and so hide it); the latency of an event is receipt time minus the time
  before its create was sent (one clock, the machine's). Goal: p99 ≤ 50 ms at
  1,000 watchers. With several masters the watchers are on a master the writes do
  NOT go through, so the latency includes etcd's watch to another master. The
  watchers are NOT in the bench process: one Python process decoding 1,000 x 50
  events/s (50k messages/s) would be the bottleneck and the figure would measure
  the bench's client. They run in `--watch-processes` child processes (spawned, 50
  streams per channel) that report their latencies back. Beside each latency: the
  watched master's CPU seconds per delivered event (user + system from
  /proc/PID/stat while the writes ran), which a shared machine's load disturbs far
  less than a latency.

The floors, measured in the same run just before the configuration they are the
floor of (a shared machine's load drifts; an adjacent floor keeps the ratio honest):
- SQLite: the store's schema and durability (WAL, synchronous=FULL), each write the
  rows the store writes (object, log entry, revision), with the stored Pod's own
  bytes (the first create's reply); one transaction per write (the floor of 1
  client) and 8 writes per transaction (8 clients: the store commits the writes
  that arrived meanwhile in one transaction, at most 8 here);
- grpc.aio: a server in a child process doing nothing. Echo returns the request's
  bytes: calls/s from the same 1 and 8 clients as the creates (one channel each,
  one call in flight) is what Python's gRPC alone allows a create. Its Watch streams
  every PodWatchEvent published to it to as many streams, from the same watcher
  processes, at the same rate: the latency and the CPU per message of a fan-out
  with no work but gRPC's;
- etcd: KV.Txn `If mod_revision == 0 Then put` (what a create is) through
  kubeling's own stubs on one channel, from 1 and from 8 concurrent writers; and a
  single raw etcd watch on a prefix while one writer puts 50 values/s. The floor
  includes Python's gRPC client, as the master's store does.

`--profile sqlite|etcd` instead runs 8 clients against a master inside this process
under cProfile and prints the top of the profile.

The ratio columns are ours / floor: the share of the raw rate the API keeps (for
rates), or how many times the raw latency or CPU it takes (for latencies, CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import operator
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.etcd import EtcdCluster, running_etcd
from tests.support.processes import MasterProcess

from kubeling.client import Client
from kubeling.etcdpb import etcd_pb2, etcd_pb2_grpc
from kubeling.v1 import core_pb2, meta_pb2

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
        await api.namespaces.create(
            core_pb2.Namespace(metadata=meta_pb2.ObjectMeta(name=namespace))
        )
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


# ------------------------------------------------------------------ watchers in child processes

# Watchers per client channel in a watcher process: informers of different
# programs each have their own connection; one connection for every stream would
# let HTTP/2 pack many streams' messages into one write and flatter the server.
WATCHERS_PER_CHANNEL = 50
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
_ADDED = meta_pb2.WatchEventType.Value("ADDED")
_BOOKMARK = meta_pb2.WatchEventType.Value("BOOKMARK")


def _watch_group(
    address: str, method: str, request: bytes, watchers: int, writes: int, conn: Connection
) -> None:
    """A child process: `watchers` server streams of `method` (a Pod Watch of the
    master, or the floor server's fan-out), `WATCHERS_PER_CHANNEL` per channel,
    each message decoded as a PodWatchEvent. Sends "ready" once every stream has
    its initial-events bookmark, then the latencies of `writes` ADDED events per
    stream: receipt time minus the sent-at annotation (one clock: the machine's)."""

    async def run() -> list[float]:
        channels = [
            grpc.aio.insecure_channel(address)
            for _ in range(max(1, -(-watchers // WATCHERS_PER_CHANNEL)))
        ]
        values: list[float] = []
        ready = 0
        all_ready = asyncio.Event()

        async def watcher(channel: grpc.aio.Channel) -> None:
            nonlocal ready
            seen = 0
            call = channel.unary_stream(
                method, response_deserializer=core_pb2.PodWatchEvent.FromString
            )(request)
            async for event in call:
                if event.type == _BOOKMARK:
                    if INITIAL_EVENTS_END in event.object.metadata.annotations:
                        ready += 1
                        if ready == watchers:
                            all_ready.set()
                    continue
                if event.type != _ADDED:
                    continue
                values.append(time.time() - float(event.object.metadata.annotations[SENT_AT]))
                seen += 1
                if seen == writes:
                    call.cancel()
                    return

        tasks = [asyncio.create_task(watcher(channels[i % len(channels)])) for i in range(watchers)]
        try:
            await asyncio.wait_for(all_ready.wait(), 60)
            conn.send(("ready", None))
            await asyncio.wait_for(asyncio.gather(*tasks), 60 + writes / 5)
        finally:
            for task in tasks:
                task.cancel()
            for channel in channels:
                await channel.close()
        return values

    try:
        conn.send(("done", asyncio.run(run())))
    except BaseException as exc:  # the parent shows why this group failed
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


@dataclass
class WatchResult:
    latency: Latency
    # The watched server's CPU seconds (user + system, /proc/PID/stat) per message
    # delivered to one watcher while the writes ran: robust to a shared machine's
    # load, unlike the latency. None when the server is not on this machine.
    cpu_per_event: float | None = None
    write_rate: float = 0.0  # the creates/s the writer kept up


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _reply(conn: Connection, want: str) -> Any:
    try:
        kind, body = await asyncio.to_thread(conn.recv)
    except EOFError:
        raise RuntimeError("a bench child process exited without a word") from None
    if kind != want:
        raise RuntimeError(f"bench child process: {body}")
    return body


@contextlib.asynccontextmanager
async def watcher_groups(
    address: str, method: str, request: bytes, watchers: int, writes: int, processes: int
) -> AsyncIterator[list[Connection]]:
    """`watchers` streams spread over `processes` child processes (spawned: no gRPC
    state is forked), all ready (initial list received) on entry; terminated by
    PID on the way out."""
    context = multiprocessing.get_context("spawn")
    groups: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    try:
        processes = max(1, min(processes, watchers))
        for index in range(processes):
            size = watchers // processes + (index < watchers % processes)
            receive, send = context.Pipe(duplex=False)
            child = context.Process(
                target=_watch_group,
                args=(address, method, request, size, writes, send),
                daemon=True,
            )
            child.start()
            send.close()
            groups.append((child, receive))
        await asyncio.gather(*(_reply(conn, "ready") for _, conn in groups))
        yield [conn for _, conn in groups]
    finally:
        for process, conn in groups:
            conn.close()
            if process.is_alive():
                process.terminate()
            process.join(10)


async def _paced(writes: int, rate: float, write: Callable[[int], Awaitable[None]]) -> float:
    """Calls write(i) at `rate`/s on a fixed timetable (open loop: a slow write does
    not slow the next ones down, so a loaded server sees the whole rate), at most
    64 in flight; returns the rate achieved."""
    slots = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with slots:
            await write(i)

    start = time.perf_counter()
    tasks = []
    for i in range(writes):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return writes / (time.perf_counter() - start)


async def watch_latency(
    write_to: str,
    watch_on: str,
    watchers: int,
    writes: int,
    rate: float,
    processes: int = 4,
    watched_pid: int | None = None,
) -> WatchResult:
    """`watchers` watches on one namespace of `watch_on`, spread over `processes`
    child processes, while this process creates `writes` Pods through `write_to` at
    `rate`/s. The watchers are not in this process: decoding 1,000 watchers x 50
    events/s (50k messages/s) in one Python process would measure the bench
    client, not the master."""
    namespace = f"watch-{uuid.uuid4().hex[:6]}"
    await make_namespace([write_to, watch_on] if watch_on != write_to else [write_to], namespace)
    request = meta_pb2.WatchRequest(namespace=namespace).SerializeToString()
    result = WatchResult(Latency())
    method = "/kubeling.v1.Pods/Watch"
    async with (
        watcher_groups(watch_on, method, request, watchers, writes, processes) as groups,
        Client(write_to) as writer,
    ):
        cpu_before = cpu_seconds(watched_pid) if watched_pid else 0.0

        async def create(i: int) -> None:
            pod = make_pod(f"w-{i}", namespace)
            pod.metadata.annotations[SENT_AT] = repr(time.time())
            await writer.pods.create(pod)

        result.write_rate = await _paced(writes, rate, create)
        for values in await asyncio.gather(*(_reply(conn, "done") for conn in groups)):
            result.latency.values.extend(values)
        if watched_pid:
            result.cpu_per_event = (cpu_seconds(watched_pid) - cpu_before) / len(
                result.latency.values
            )
    return result


# ------------------------------------------------------------------ the gRPC floor

_FLOOR_SERVICE = "/bench.Floor/"


def _floor_server(conn: Connection) -> None:
    """A child process: the least a grpc.aio server can do for the API's two
    shapes. Echo returns the request's bytes (a create without the work); Watch
    streams, after a bookmark, every message Publish is given (a watch fan-out
    without the work: the same bytes to every stream, one queue each)."""

    async def serve() -> None:
        streams: set[asyncio.Queue[bytes]] = set()
        bookmark = core_pb2.PodWatchEvent(type=_BOOKMARK)
        bookmark.object.metadata.annotations[INITIAL_EVENTS_END] = "true"
        ready = bookmark.SerializeToString()

        async def echo(request: bytes, context: Any) -> bytes:
            return request

        async def publish(request: bytes, context: Any) -> bytes:
            for queue in streams:
                queue.put_nowait(request)
            return b""

        async def watch(request: bytes, context: Any) -> AsyncIterator[bytes]:
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            streams.add(queue)
            try:
                yield ready
                while True:
                    yield await queue.get()
            finally:
                streams.discard(queue)

        handler = grpc.method_handlers_generic_handler(
            _FLOOR_SERVICE.strip("/"),
            {
                "Echo": grpc.unary_unary_rpc_method_handler(echo),
                "Publish": grpc.unary_unary_rpc_method_handler(publish),
                "Watch": grpc.unary_stream_rpc_method_handler(watch),
            },
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        conn.send(("serving", port))
        await asyncio.to_thread(conn.recv)  # anything, or EOF: stop
        await server.stop(None)

    try:
        asyncio.run(serve())
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


@contextlib.asynccontextmanager
async def floor_server() -> AsyncIterator[tuple[str, int]]:
    """The floor server in a child process: (its address, its PID)."""
    context = multiprocessing.get_context("spawn")
    conn, theirs = context.Pipe()
    child = context.Process(target=_floor_server, args=(theirs,), daemon=True)
    child.start()
    theirs.close()
    try:
        port = await _reply(conn, "serving")
        assert child.pid is not None
        yield f"127.0.0.1:{port}", child.pid
    finally:
        with contextlib.suppress(OSError):
            conn.send(("stop", None))
        conn.close()
        child.join(10)
        if child.is_alive():
            child.terminate()
            child.join(10)


async def echo_rate(address: str, value: bytes, clients: int, total: int) -> float:
    """Trivial calls/s: `clients` channels, one Echo of `value` in flight each (the
    shape of creates_per_second's clients)."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(clients)]
    try:
        calls = [c.unary_unary(_FLOOR_SERVICE + "Echo") for c in channels]
        for call in calls:
            await call(value)
        per_client = total // clients

        async def run(call: grpc.aio.UnaryUnaryMultiCallable) -> None:
            for _ in range(per_client):
                await call(value)

        start = time.perf_counter()
        await asyncio.gather(*(run(call) for call in calls))
        return per_client * clients / (time.perf_counter() - start)
    finally:
        for channel in channels:
            await channel.close()


async def fanout_latency(
    address: str, pid: int, value: bytes, watchers: int, writes: int, rate: float, processes: int
) -> WatchResult:
    """The floor of watch_latency: the same watcher processes on the floor server's
    Watch, the same messages (a PodWatchEvent of the stored Pod, sent-at set),
    published at the same rate."""
    result = WatchResult(Latency())
    pod = core_pb2.Pod.FromString(value)
    method = _FLOOR_SERVICE + "Watch"
    async with (
        watcher_groups(address, method, b"", watchers, writes, processes) as groups,
        grpc.aio.insecure_channel(address) as channel,
    ):
        publish = channel.unary_unary(_FLOOR_SERVICE + "Publish")
        cpu_before = cpu_seconds(pid)

        async def send(i: int) -> None:
            pod.metadata.annotations[SENT_AT] = repr(time.time())
            await publish(core_pb2.PodWatchEvent(type=_ADDED, object=pod).SerializeToString())

        result.write_rate = await _paced(writes, rate, send)
        for values in await asyncio.gather(*(_reply(conn, "done") for conn in groups)):
            result.latency.values.extend(values)
        result.cpu_per_event = (cpu_seconds(pid) - cpu_before) / len(result.latency.values)
    return result


@dataclass
class MasterResults:
    one: float | None  # creates/s with 1 client (measured with one master only)
    eight: float
    watch: WatchResult


async def measure(
    started: list[MasterProcess], args: argparse.Namespace, one_client: bool
) -> MasterResults:
    addresses = [m.address for m in started]
    one = await creates_per_second(addresses, 1, args.creates // 2) if one_client else None
    eight = await creates_per_second(addresses, 8, args.creates)
    # Watch a master the writes do not go through, when there is one.
    watched = started[-1].process
    watch = await watch_latency(
        addresses[0],
        addresses[-1],
        args.watchers,
        args.watch_writes,
        args.watch_rate,
        args.watch_processes,
        watched.pid if watched is not None else None,
    )
    return MasterResults(one, eight, watch)


@contextlib.contextmanager
def masters(root: Path, count: int, *store: str) -> Iterator[list[MasterProcess]]:
    """`count` master processes (own data dir and port each), stopped by PID. All
    the bench's watchers come from 127.0.0.1: no per-client watch limit."""
    started: list[MasterProcess] = []
    try:
        for i in range(count):
            master = MasterProcess(
                root / f"master{i}", None, "--controllers=", "--max-watches-per-client=0", *store
            )
            started.append(master)
            try:
                master.start()
            except (RuntimeError, TimeoutError):
                # Its data dir goes with the temp dir: show why it did not serve.
                print(master.log()[-3000:], file=sys.stderr)
                raise
        yield started
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
    # The grpc.aio floor (floor_server): trivial calls/s from 1 and 8 clients, and
    # the same bytes fanned out to as many streams as the master's watchers.
    echo_one: float | None = None
    echo_eight: float | None = None
    fanout: WatchResult | None = None


@dataclass
class Measured:
    ours: MasterResults
    floor: Floor


async def sqlite_side(args: argparse.Namespace, root: Path) -> tuple[bytes, Measured]:
    """The SQLite master, its floors measured just before: SQLite on the same disk,
    and the grpc.aio floor server (echo calls, the watch fan-out) on the same CPUs."""
    with masters(root / "sqlite", 1) as started:
        value = await stored_pod(started[0].address)
        floor = Floor(
            sqlite_insert_rate(root / "floor-1.db", value, args.creates // 4, 1),
            sqlite_insert_rate(root / "floor-8.db", value, args.creates * 2, 8),
        )
        Console(stderr=True).log("grpc.aio floor server")
        async with floor_server() as (address, pid):
            floor.echo_one = await echo_rate(address, value, 1, args.creates // 2)
            floor.echo_eight = await echo_rate(address, value, 8, args.creates)
            floor.fanout = await fanout_latency(
                address,
                pid,
                value,
                args.watchers,
                args.watch_writes,
                args.watch_rate,
                args.watch_processes,
            )
        Console(stderr=True).log("SQLite master")
        return value, Measured(await measure(started, args, one_client=True), floor)


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
        with masters(root / f"etcd-{count}", count, *store) as started:
            ours = await measure(started, args, one_client=count == 1)
        results[count] = Measured(ours, floor)
    return results


# ------------------------------------------------------------------ the tables

# The goals of issue 16, printed next to the figures they judge.
GOAL_CREATES_8 = 3000.0  # creates/s with 8 clients, SQLite master
GOAL_WATCH_P99 = 0.050  # seconds, at GOAL_WATCHERS watchers
GOAL_WATCHERS = 1000


def rate(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def us(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e6:.1f} µs"


def per_cpu_second(cpu_per_event: float | None) -> str:
    return "" if not cpu_per_event else f"{1 / cpu_per_event:,.0f}"


def share(ours: float | None, floor: float | None) -> str:
    return "" if ours is None or floor is None else f"{ours / floor:.2f}"


def times(ours: float, floor: float) -> str:
    return f"{ours / floor:.1f}x"


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def print_tables(
    args: argparse.Namespace,
    value_size: int,
    sqlite: Measured,
    etcd: dict[int, Measured],
    load: tuple[float, float],
) -> None:
    # Wide enough for the tables when printed to a file or a pipe (rich's default: 80).
    console = Console(width=None if sys.stdout.isatty() else 160)
    one = etcd[1]
    watch_floor = one.floor.watch
    fanout = sqlite.floor.fanout
    assert watch_floor is not None and fanout is not None
    creates = Table(
        title=f"creates/s of a Pod ({value_size} bytes stored): SQLite master vs etcd "
        "master (1 member), each beside its floors",
        caption="raw SQLite: the store's rows, WAL + synchronous=FULL, 1 write per "
        "transaction for 1 client, 8 per transaction for 8; grpc.aio echo: a server in "
        "its own process returning the request's bytes, the same clients (one channel "
        "each, one call in flight); raw etcd: Txn (mod_revision == 0 → put) from 1 and "
        "8 concurrent writers on one channel",
    )
    for name in (
        "clients",
        "SQLite master",
        "goal",
        "raw SQLite",
        "ratio",
        "grpc.aio echo",
        "ratio",
        "etcd master",
        "raw etcd Txn put",
        "ratio",
    ):
        creates.add_column(name, justify="right")
    creates.add_row(
        "1",
        rate(sqlite.ours.one),
        "",
        rate(sqlite.floor.one),
        share(sqlite.ours.one, sqlite.floor.one),
        rate(sqlite.floor.echo_one),
        share(sqlite.ours.one, sqlite.floor.echo_one),
        rate(one.ours.one),
        rate(one.floor.one),
        share(one.ours.one, one.floor.one),
    )
    creates.add_row(
        "8",
        rate(sqlite.ours.eight),
        f"≥ {GOAL_CREATES_8:,.0f}: {verdict(sqlite.ours.eight >= GOAL_CREATES_8)}",
        rate(sqlite.floor.eight),
        share(sqlite.ours.eight, sqlite.floor.eight),
        rate(sqlite.floor.echo_eight),
        share(sqlite.ours.eight, sqlite.floor.echo_eight),
        rate(one.ours.eight),
        rate(one.floor.eight),
        share(one.ours.eight, one.floor.eight),
    )
    console.print(creates)

    at_goal = args.watchers >= GOAL_WATCHERS
    watch = Table(
        title=f"watch latency: {args.watchers} watchers on one namespace (in "
        f"{args.watch_processes} client processes, {WATCHERS_PER_CHANNEL} per channel), "
        f"{args.watch_writes} creates at {args.watch_rate:.0f}/s (open loop)",
        caption="grpc.aio fan-out: the floor server streaming each published "
        "PodWatchEvent to as many streams from the same client processes, one queue "
        "per stream; raw etcd watch: one watch on a prefix, puts at the same rate; "
        "CPU per event: the server process's user+system CPU while the writes ran, "
        "per message delivered to one watcher; events/CPU-s: its inverse, what one "
        "CPU-second of that server delivers (an asyncio server uses one core)",
    )
    for name in (
        "",
        "SQLite master",
        "grpc.aio fan-out",
        "ratio",
        "etcd master",
        "raw etcd watch",
        "ratio etcd/raw",
        "goal",
    ):
        watch.add_column(name, justify="right")
    goal_p99 = f"≤ {ms(GOAL_WATCH_P99)} at {GOAL_WATCHERS:,} watchers" + (
        f": SQLite {verdict(sqlite.ours.watch.latency.p99 <= GOAL_WATCH_P99)}" if at_goal else ""
    )
    for name in ("p50", "p99"):
        get = operator.attrgetter(name)
        watch.add_row(
            name,
            ms(get(sqlite.ours.watch.latency)),
            ms(get(fanout.latency)),
            times(get(sqlite.ours.watch.latency), get(fanout.latency)),
            ms(get(one.ours.watch.latency)),
            ms(get(watch_floor)),
            times(get(one.ours.watch.latency), get(watch_floor)),
            goal_p99 if name == "p99" else "",
        )
    sqlite_cpu, fanout_cpu = sqlite.ours.watch.cpu_per_event, fanout.cpu_per_event
    watch.add_row(
        "CPU per event",
        us(sqlite_cpu),
        us(fanout_cpu),
        share(sqlite_cpu, fanout_cpu),
        us(one.ours.watch.cpu_per_event),
        "",
        "",
        "",
    )
    # What one CPU-second delivers, against what the run asks: whether a server
    # could keep up at all, whatever the load around it.
    watch.add_row(
        "events/CPU-s",
        per_cpu_second(sqlite_cpu),
        per_cpu_second(fanout_cpu),
        "",
        per_cpu_second(one.ours.watch.cpu_per_event),
        "",
        "",
        f"needed: {args.watchers * args.watch_rate:,.0f}/s",
    )
    watch.add_row(
        "writes/s kept",
        f"{sqlite.ours.watch.write_rate:.1f}",
        f"{fanout.write_rate:.1f}",
        "",
        f"{one.ours.watch.write_rate:.1f}",
        "",
        "",
        f"{args.watch_rate:.0f}",
    )
    watch.add_row(
        "events",
        f"{len(sqlite.ours.watch.latency.values):,}",
        f"{len(fanout.latency.values):,}",
        "",
        f"{len(one.ours.watch.latency.values):,}",
        f"{len(watch_floor.values):,}",
        "",
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
            ms(ours.watch.latency.p50),
            ms(ours.watch.latency.p99),
            f"{ms(floor.watch.p50)} / {ms(floor.watch.p99)}",
            times(ours.watch.latency.p99, floor.watch.p99),
        )
    console.print(several)
    console.print(
        f"load average (1 min) before {load[0]:.2f}, after {load[1]:.2f} on "
        f"{os.cpu_count()} CPUs: anything else running shares them"
    )


# ------------------------------------------------------------------ main


async def run(args: argparse.Namespace, root: Path) -> None:
    before = os.getloadavg()[0]
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

    async def profiled(**config: Any) -> None:
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
    parser.add_argument("--watchers", type=int, default=GOAL_WATCHERS)
    parser.add_argument(
        "--watch-processes", type=int, default=4, help="client processes the watchers run in"
    )
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
        args.watch_processes = 2
    with tempfile.TemporaryDirectory(prefix="kubeling-bench-", dir=args.dir) as root:
        asyncio.run((profile if args.profile else run)(args, Path(root)))


if __name__ == "__main__":
    main()
