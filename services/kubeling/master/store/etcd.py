"""etcd backend: several masters share one cluster's state, as kube-apiserver does.

The mapping is Kubernetes' own:
- a key lives at `PREFIX + key` ("/kubeling" + "/pods/default/web"); its revision
  (metadata.resourceVersion) is the etcd key's `mod_revision`, stamped on decode;
- create is a transaction `If mod_revision(key) == 0 Then put`, update and delete
  are `If mod_revision(key) == expected Then put/delete Else get` (without an
  expected revision: `If version(key) > 0`), so conflicts are decided by etcd,
  whichever master wrote;
- every master reads from its own `WatchCache`, fed by ONE etcd watch on the whole
  prefix (with progress notifications, which also move the cache's revision when
  nothing under the prefix changes). A write returns once that watch has brought
  its revision into the cache, so a master reads its own writes; `wait_consistent`
  lets a read first catch up with etcd's current revision (a write made through
  another master), as Kubernetes' consistent reads from cache do;
- the history is etcd's: at start the cache is loaded at revision R and its window
  is filled by replaying etcd's events before R (as far as `history` and the last
  compaction allow), so clients resume watches across a master restart; every
  `compaction_interval` s the masters compact etcd to the revision they saw one
  interval before, coordinated through one key's version so only one of them does
  (kube-apiserver's scheme).

Transport: one channel per etcd endpoint; a call that could not reach its member
(UNAVAILABLE) moves to the next member and is retried there, so losing a member is
invisible beyond a retry. Over TLS with the given credentials (client certificate
from the cluster CA by default, master/etcd_pki.py).

The stubs are kubeling's own minimal copy of etcd's v3 API (protos/kubeling/etcdpb):
the third-party clients are either without TLS (aetcd), conflicting with each
other's protobuf symbols, or broken on protobuf 6 (etcd3); generated stubs use the
same grpc.aio stack, TLS code and protobuf runtime as the rest of kubeling.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from kubeling.common.supervisor import Supervisor
from kubeling.etcdpb import etcd_pb2 as pb
from kubeling.etcdpb import etcd_pb2_grpc as pb_grpc
from kubeling.master.metrics import STORAGE_COMMIT_DURATION, STORAGE_DECODE_ERRORS
from kubeling.master.store.base import (
    Codec,
    ConflictError,
    Entry,
    Event,
    EventType,
    KeyExistsError,
    KeyNotFoundError,
    StoreUnavailableError,
)
from kubeling.master.store.cache import CachedReads, WatchCache

log = structlog.get_logger(__name__)

DEFAULT_PREFIX = "/kubeling"
# kube-apiserver's --etcd-compaction-interval default.
DEFAULT_COMPACTION_INTERVAL = 300.0
# How long a write waits for the watch to bring it into the cache before it is
# acknowledged anyway (it is committed; only read-your-write would be late).
_CACHE_WAIT = 10.0
# Retrying a call over the members: for this long at most.
_RETRY_FOR = 15.0
# The store is unhealthy (master /healthz) once its watch has been down this long.
_UNHEALTHY_AFTER = 30.0
_PAGE = 5_000
_MAX_MESSAGE = 256 * 1024 * 1024
# Keys of the store's own under the prefix (never in the cache): the one that
# coordinates compactions among masters (kube-apiserver's "compact_rev_key"), and
# the one each open writes so that its replay of the history has a known last event.
_COMPACT_KEY = "/_compact_rev_key"
_OPEN_KEY = "/_opened"

T = TypeVar("T")


class EtcdStoreError(Exception):
    """etcd cannot be used (bad endpoint list, not reachable at start)."""


def parse_endpoints(text: str) -> list[str]:
    """`etcd://h1:2379,h2:2379` (or the bare list) → ["h1:2379", "h2:2379"]."""
    body = text.removeprefix("etcd://")
    endpoints = [e.strip() for e in body.split(",")]
    if not body or any(not e for e in endpoints):
        raise EtcdStoreError(f"--store {text!r}: expected etcd://HOST:PORT[,HOST:PORT...]")
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise EtcdStoreError(f"--store {text!r}: {endpoint!r} is not HOST:PORT")
    return endpoints


def _prefix_end(prefix: bytes) -> bytes:
    """The first key after every key starting with `prefix` (etcd's range_end)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


class EtcdStore(CachedReads):
    def __init__(
        self,
        endpoints: list[str],
        codec: Codec,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        prefix: str = DEFAULT_PREFIX,
        history: int = 10_000,
        supervisor: Supervisor | None = None,
        compaction_interval: float = DEFAULT_COMPACTION_INTERVAL,
    ) -> None:
        if not endpoints:
            raise EtcdStoreError("no etcd endpoint given")
        self._endpoints = endpoints
        self._codec = codec
        self._credentials = credentials
        self._prefix = prefix.rstrip("/")
        self._range_key = (self._prefix + "/").encode()
        self._range_end = _prefix_end(self._range_key)
        self._history = history
        self._supervisor = supervisor
        self._compaction_interval = compaction_interval
        self._cache = WatchCache(history, codec.revision_of)
        self._channels: list[grpc.aio.Channel] = []
        self._current = 0  # the member calls go to first
        self._watcher: asyncio.Task[None] | None = None
        self._compactor: asyncio.Task[None] | None = None
        # Writes waiting for their revision to reach the cache: (rev, seq, future).
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = 0
        self._open = False
        # Since when the etcd watch is down (None: up), for health.
        self._watch_down_since: float | None = None

    # ------------------------------------------------------------ lifecycle

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # Reconnect to a member that comes back quickly, not after minutes.
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        if self._credentials is None:
            return grpc.aio.insecure_channel(endpoint, options=options)
        return grpc.aio.secure_channel(endpoint, self._credentials, options=options)

    async def open(self) -> None:
        self._channels = [self._channel(e) for e in self._endpoints]
        try:
            revision = await self._mark_open()
            entries, revision = await self._load(revision)
            history = await self._replay(revision)
        except grpc.aio.AioRpcError as exc:
            await self._close_channels()
            raise EtcdStoreError(
                f"etcd at {','.join(self._endpoints)} did not answer: {exc.details()}"
            ) from None
        self._cache.load(entries, revision, history)
        self._open = True
        self._watcher = self._start("store-etcd-watch", self._watch_forever)
        if self._compaction_interval > 0:
            self._compactor = self._start("store-etcd-compaction", self._compact_forever)
        log.info(
            "store opened",
            etcd=",".join(self._endpoints),
            prefix=self._prefix,
            revision=revision,
            objects=len(entries),
            history=len(history),
        )

    def _start(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        if self._supervisor is not None:
            return self._supervisor.start(name, loop)
        return asyncio.create_task(loop(), name=name)  # type: ignore[arg-type]

    async def close(self) -> None:
        self._open = False
        for task in (self._watcher, self._compactor):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._watcher = self._compactor = None
        for _, _, future in self._waiters:
            if not future.done():
                future.set_exception(StoreUnavailableError("store closed"))
        self._waiters.clear()
        self._cache.close_all("server shutting down")
        await self._close_channels()

    async def _close_channels(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels = []

    # ------------------------------------------------------------ calls

    async def _call(self, make: Callable[[grpc.aio.Channel], Awaitable[T]], what: str) -> T:
        """Run `make(channel)` on the current member; a member that cannot be reached
        (or has no leader) hands over to the next, until _RETRY_FOR has passed."""
        deadline = time.monotonic() + _RETRY_FOR
        delay = 0.05
        while True:
            index = self._current
            try:
                return await make(self._channels[index])
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                if self._current == index:
                    self._current = (index + 1) % len(self._channels)
                log.debug("etcd member unavailable; next", what=what, error=exc.details())
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _kv(self, channel: grpc.aio.Channel) -> pb_grpc.KVStub:
        return pb_grpc.KVStub(channel)

    async def _txn(self, request: pb.TxnRequest) -> pb.TxnResponse:
        try:
            return await self._call(lambda c: self._kv(c).Txn(request, timeout=10.0), "txn")
        except grpc.aio.AioRpcError as exc:
            raise StoreUnavailableError(f"etcd: {exc.details()}") from None

    # ------------------------------------------------------------ loading

    def _store_key(self, etcd_key: bytes) -> str:
        return etcd_key.decode()[len(self._prefix) :]

    @staticmethod
    def _is_ours(key: str) -> bool:
        return not key.startswith("/_")

    def _decode(self, key: str, kv: pb.KeyValue) -> Any:
        value = self._codec.decode(key, kv.value)
        self._codec.stamp(value, kv.mod_revision)
        return value

    def _decode_cached(self, key: str, kv: pb.KeyValue) -> Any | None:
        """A value for the cache, or None (logged, counted) when this master cannot
        decode it: one bad value must not stop the watch every master depends on."""
        try:
            return self._decode(key, kv)
        except Exception as exc:
            STORAGE_DECODE_ERRORS.inc()
            log.error("stored value not decodable; left out", key=key,
                      revision=kv.mod_revision, error=str(exc))  # fmt: skip
            return None

    async def _mark_open(self) -> int:
        """Write the open marker; its revision is where loading and replay meet."""
        key = (self._prefix + _OPEN_KEY).encode()
        put = pb.RequestOp(request_put=pb.PutRequest(key=key, value=b""))
        reply = await self._call(
            lambda c: self._kv(c).Txn(pb.TxnRequest(success=[put]), timeout=10.0), "open"
        )
        return int(reply.header.revision)

    async def _load(self, revision: int = 0) -> tuple[list[Entry], int]:
        """Every key under the prefix at one revision (default: the newest), in pages."""
        entries: list[Entry] = []
        start = self._range_key
        while True:
            request = pb.RangeRequest(
                key=start, range_end=self._range_end, limit=_PAGE, revision=revision
            )
            reply = await self._call(lambda c, r=request: self._kv(c).Range(r), "load")  # type: ignore[misc]
            if revision == 0:
                revision = reply.header.revision
            for kv in reply.kvs:
                key = self._store_key(kv.key)
                if self._is_ours(key):
                    value = self._decode_cached(key, kv)
                    if value is not None:
                        entries.append(Entry(key, value, kv.mod_revision))
            if not reply.more or not reply.kvs:
                return entries, revision
            start = reply.kvs[-1].key + b"\0"

    async def _replay(self, revision: int) -> list[Event]:
        """The events under the prefix in the last `history` revisions up to
        `revision` (the open marker's write) that etcd still keeps, for the cache's
        window. The marker's own event ends the replay."""
        first = max(1, revision - self._history + 1)
        events: list[Event] = []
        create = self._create_request(first, prev_kv=True)
        async with self._watch_stream(create) as (call, requests):
            async for reply in call:
                if reply.compact_revision:
                    # Compacted: what etcd still has starts there.
                    if reply.compact_revision > revision:
                        return []
                    await requests.put(self._create_request(reply.compact_revision, True))
                    continue
                if reply.canceled:
                    # Refused for another reason: the stream stays open without
                    # events, so waiting for the marker would wait forever.
                    log.warning("etcd refused the history; none kept", reason=reply.cancel_reason)
                    return []
                for change in reply.events:
                    if change.kv.mod_revision >= revision:
                        return events
                    event = self._event_from(change, replaying=True)
                    if event is not None:
                        events.append(event)
            return events

    @contextlib.asynccontextmanager
    async def _watch_stream(
        self, create: pb.WatchRequest
    ) -> AsyncIterator[tuple[Any, asyncio.Queue[pb.WatchRequest | None]]]:
        """A Watch call on the current member that starts with `create`; put more
        requests on the queue. Cancelled on the way out."""
        requests: asyncio.Queue[pb.WatchRequest | None] = asyncio.Queue()
        requests.put_nowait(create)

        async def outgoing() -> AsyncIterator[pb.WatchRequest]:
            while (request := await requests.get()) is not None:
                yield request

        call = pb_grpc.WatchStub(self._channels[self._current]).Watch(outgoing())
        try:
            yield call, requests
        finally:
            call.cancel()
            requests.put_nowait(None)

    def _create_request(self, start: int, prev_kv: bool) -> pb.WatchRequest:
        return pb.WatchRequest(
            create_request=pb.WatchCreateRequest(
                key=self._range_key,
                range_end=self._range_end,
                start_revision=start,
                progress_notify=True,
                prev_kv=prev_kv,
            )
        )

    def _event_from(self, change: pb.Event, replaying: bool = False) -> Event | None:
        """Our Event for an etcd event. Live, the previous value comes from the cache
        (it holds every key under the prefix); replaying, from etcd's prev_kv."""
        kv = change.kv
        key = self._store_key(kv.key)
        if not self._is_ours(key):
            return None
        if replaying:
            prev = self._decode_cached(key, change.prev_kv) if change.HasField("prev_kv") else None
        else:
            entry = self._cache.get(key)
            prev = entry.value if entry is not None else None
        if change.type == pb.Event.DELETE:
            if prev is None:
                return None  # deleted before we ever saw it
            return Event(EventType.DELETED, key, kv.mod_revision, prev, prev)
        value = self._decode_cached(key, kv)
        if value is None:
            return None
        type_ = EventType.ADDED if kv.create_revision == kv.mod_revision else EventType.MODIFIED
        return Event(type_, key, kv.mod_revision, value, prev)

    # ------------------------------------------------------------ the watch

    async def _watch_forever(self) -> None:
        """Keep the cache in step with etcd from its revision on, over whichever
        member answers; a watch etcd cancels as compacted reloads the cache."""
        delay = 0.1
        while True:
            try:
                await self._watch_once()
                delay = 0.1
            except grpc.aio.AioRpcError as exc:
                log.warning("etcd watch broke; resuming", error=exc.details())
                self._current = (self._current + 1) % len(self._channels)
            if self._watch_down_since is None:
                self._watch_down_since = time.monotonic()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _watch_once(self) -> None:
        create = self._create_request(self._cache.revision + 1, prev_kv=False)
        async with self._watch_stream(create) as (call, _):
            async for reply in call:
                if reply.canceled or reply.compact_revision:
                    await self._resync(reply.compact_revision, reply.cancel_reason)
                    return
                if reply.created:
                    # Its header is etcd's revision now, not progress: the events
                    # from our start revision are still to come.
                    self._watch_down_since = None
                    continue
                self._apply(reply)

    def _apply(self, reply: pb.WatchResponse) -> None:
        events: list[Event] = []
        for change in reply.events:
            event = self._event_from(change)
            if event is not None:
                # Apply one by one: the next event's previous value may be this one.
                self._cache.apply([event])
                events.append(event)
        if reply.header.revision > self._cache.revision and not reply.events:
            # A progress notification: nothing under the prefix changed up to here.
            self._cache.advance(reply.header.revision)
        elif reply.events and reply.events[-1].kv.mod_revision > self._cache.revision:
            self._cache.advance(reply.events[-1].kv.mod_revision)
        self._wake_writers()

    async def _resync(self, compact_revision: int, reason: str) -> None:
        """Our watch fell behind etcd's compaction: reload everything and close the
        watchers (their clients relist), as a restarted master would look."""
        log.warning("etcd watch compacted; reloading", compacted=compact_revision, reason=reason)
        entries, revision = await self._load()
        self._cache.close_all("storage was reloaded; relist")
        self._cache.load(entries, revision, [])
        self._wake_writers()

    def _wake_writers(self) -> None:
        revision = self._cache.revision
        while self._waiters and self._waiters[0][0] <= revision:
            _, _, future = self._waiters.pop(0)
            if not future.done():
                future.set_result(None)

    async def _until_cached(self, revision: int) -> None:
        if self._cache.revision >= revision:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        waiter = (revision, self._seq, future)
        bisect.insort(self._waiters, waiter)
        try:
            await asyncio.wait_for(future, _CACHE_WAIT)
        except TimeoutError:
            log.warning("etcd watch is behind; write acknowledged before it was cached")
        finally:
            # Timed out or cancelled: not left behind while the watch stays down.
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    async def wait_consistent(self) -> None:
        """Until the cache holds everything etcd had committed when this was called
        (writes through other masters included): one cheap count-only read."""
        request = pb.RangeRequest(key=self._range_key, range_end=self._range_end, count_only=True)
        try:
            reply = await self._call(lambda c: self._kv(c).Range(request, timeout=5.0), "rev")
        except grpc.aio.AioRpcError as exc:
            raise StoreUnavailableError(f"etcd: {exc.details()}") from None
        await self._until_cached(reply.header.revision)

    # ------------------------------------------------------------ backups

    def connect(self) -> None:
        """Channels only, for `export`/`snapshot`/`import_values` without `open`."""
        if not self._channels:
            self._channels = [self._channel(e) for e in self._endpoints]

    async def export(self) -> tuple[list[tuple[str, bytes, int]], int]:
        """Every stored object as (key, value with its resourceVersion stamped, mod
        revision), all at one revision, and that revision. A running cluster may
        write meanwhile: the pages are read at the first page's revision."""
        self.connect()
        entries, revision = await self._load()
        encode = self._codec.encode
        return [(e.key, encode(e.value), e.mod_rev) for e in entries], revision

    async def snapshot(self, write: Callable[[bytes], object]) -> int:
        """Stream etcd's own snapshot of its whole database (what `etcdctl snapshot
        restore` takes) to `write`; returns its size in bytes."""
        self.connect()
        size = 0
        call = pb_grpc.MaintenanceStub(self._channels[self._current]).Snapshot(pb.SnapshotRequest())
        async for chunk in call:
            write(chunk.blob)
            size += len(chunk.blob)
        return size

    async def import_values(self, items: list[tuple[str, bytes]]) -> int:
        """Write `items` (key, encoded value) under the prefix, which must hold no
        object yet (a restore into a new cluster). Returns etcd's revision after."""
        self.connect()
        existing = await self._call(
            lambda c: self._kv(c).Range(
                pb.RangeRequest(key=self._range_key, range_end=self._range_end, count_only=True)
            ),
            "count",
        )
        if existing.count:
            raise EtcdStoreError(
                f"etcd prefix {self._prefix!r} already holds {existing.count} keys: "
                "restore into an empty prefix (--etcd-prefix)"
            )
        revision = existing.header.revision
        # etcd takes at most 128 operations in one transaction (--max-txn-ops).
        for start in range(0, len(items), 128):
            batch = items[start : start + 128]
            request = pb.TxnRequest(
                compare=[
                    pb.Compare(
                        key=self._etcd_key(k),
                        target=pb.Compare.MOD,
                        result=pb.Compare.EQUAL,
                        mod_revision=0,
                    )
                    for k, _ in batch
                ],
                success=[
                    pb.RequestOp(request_put=pb.PutRequest(key=self._etcd_key(k), value=v))
                    for k, v in batch
                ],
            )
            reply = await self._txn(request)
            if not reply.succeeded:
                raise EtcdStoreError("a key appeared under the prefix during the restore")
            revision = reply.header.revision
        return int(revision)

    # ------------------------------------------------------------ compaction

    async def _compact_forever(self) -> None:
        version, previous = 0, 0
        while True:
            await asyncio.sleep(self._compaction_interval)
            try:
                version, previous = await self.compact_once(version, previous)
            except (StoreUnavailableError, grpc.aio.AioRpcError) as exc:
                # etcd unreachable now: the next round tries again.
                log.warning("etcd compaction skipped", error=str(exc))

    async def compact_once(self, version: int, previous: int) -> tuple[int, int]:
        """One round of kube-apiserver's coordinated compaction: whoever bumps the
        shared key's version from `version` compacts to `previous` (the revision
        seen one round ago, so at least one interval of history is kept). Returns
        the (version, revision) for the next round."""
        key = (self._prefix + _COMPACT_KEY).encode()
        request = pb.TxnRequest(
            compare=[
                pb.Compare(
                    key=key,
                    target=pb.Compare.VERSION,
                    result=pb.Compare.EQUAL,
                    version=version,
                )
            ],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=b""))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
        )
        reply = await self._txn(request)
        if not reply.succeeded:
            kvs = reply.responses[0].response_range.kvs
            return (kvs[0].version if kvs else 0), reply.header.revision
        if previous > 0:
            try:
                await self._call(
                    lambda c: self._kv(c).Compact(pb.CompactionRequest(revision=previous)),
                    "compact",
                )
                log.info("etcd compacted", revision=previous)
            except grpc.aio.AioRpcError as exc:
                # Already compacted further (by hand): not an error.
                if exc.code() != grpc.StatusCode.OUT_OF_RANGE:
                    raise
        return version + 1, reply.header.revision

    def healthy(self) -> bool:
        """False once the watch feeding the cache has been down for a while (etcd
        unreachable): reads would go stale, so /healthz says so."""
        since = self._watch_down_since
        return self._open and (since is None or time.monotonic() - since < _UNHEALTHY_AFTER)

    # ------------------------------------------------------------ reads

    # ------------------------------------------------------------ writes

    def _etcd_key(self, key: str) -> bytes:
        return (self._prefix + key).encode()

    def _check_open(self) -> None:
        if not self._open:
            raise StoreUnavailableError("store is not open")

    async def create(self, key: str, value: Any) -> int:
        self._check_open()
        etcd_key = self._etcd_key(key)
        request = pb.TxnRequest(
            compare=[
                pb.Compare(
                    key=etcd_key, target=pb.Compare.MOD, result=pb.Compare.EQUAL, mod_revision=0
                )
            ],
            success=[
                pb.RequestOp(
                    request_put=pb.PutRequest(key=etcd_key, value=self._codec.encode(value))
                )
            ],
        )
        reply = await self._timed_txn(request)
        if not reply.succeeded:
            raise KeyExistsError(key)
        return await self._written(value, reply.header.revision)

    async def update(self, key: str, value: Any, expected_rev: int | None = None) -> int:
        self._check_open()
        etcd_key = self._etcd_key(key)
        put = pb.RequestOp(request_put=pb.PutRequest(key=etcd_key, value=self._codec.encode(value)))
        reply = await self._timed_txn(
            pb.TxnRequest(
                compare=[self._guard(etcd_key, expected_rev)],
                success=[put],
                failure=[pb.RequestOp(request_range=pb.RangeRequest(key=etcd_key))],
            )
        )
        if not reply.succeeded:
            raise self._failed(key, expected_rev, reply)
        return await self._written(value, reply.header.revision)

    async def delete(self, key: str, expected_rev: int | None = None) -> tuple[int, Any]:
        self._check_open()
        etcd_key = self._etcd_key(key)
        reply = await self._timed_txn(
            pb.TxnRequest(
                compare=[self._guard(etcd_key, expected_rev)],
                success=[
                    pb.RequestOp(
                        request_delete_range=pb.DeleteRangeRequest(key=etcd_key, prev_kv=True)
                    )
                ],
                failure=[pb.RequestOp(request_range=pb.RangeRequest(key=etcd_key))],
            )
        )
        if not reply.succeeded:
            raise self._failed(key, expected_rev, reply)
        deleted = reply.responses[0].response_delete_range
        if not deleted.prev_kvs:
            raise KeyNotFoundError(key)
        last = self._decode(key, deleted.prev_kvs[0])
        await self._written(None, reply.header.revision)
        return reply.header.revision, last

    async def _timed_txn(self, request: pb.TxnRequest) -> pb.TxnResponse:
        started = time.monotonic()
        reply = await self._txn(request)
        STORAGE_COMMIT_DURATION.observe(time.monotonic() - started)
        return reply

    @staticmethod
    def _guard(etcd_key: bytes, expected_rev: int | None) -> pb.Compare:
        if expected_rev is None:
            return pb.Compare(
                key=etcd_key, target=pb.Compare.VERSION, result=pb.Compare.GREATER, version=0
            )
        return pb.Compare(
            key=etcd_key,
            target=pb.Compare.MOD,
            result=pb.Compare.EQUAL,
            mod_revision=expected_rev,
        )

    @staticmethod
    def _failed(key: str, expected_rev: int | None, reply: pb.TxnResponse) -> Exception:
        kvs = reply.responses[0].response_range.kvs if reply.responses else []
        if not kvs:
            return KeyNotFoundError(key)
        return ConflictError(
            f"{key}: the object has been modified (resourceVersion {expected_rev} "
            f"is not the current {kvs[0].mod_revision})"
        )

    async def _written(self, value: Any, revision: int) -> int:
        if value is not None:
            self._codec.stamp(value, revision)
        await self._until_cached(revision)
        return revision
