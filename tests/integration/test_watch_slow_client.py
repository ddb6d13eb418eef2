"""A watcher that does not read falls behind and is closed with a clear status, while
the writers and the other watchers go on: the master's memory for one watcher is
bounded (its queue in the watch cache), whatever the client does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from kubeling.controllers.manager import ControllerSettings
from kubeling.master.server import Master, MasterConfig
from kubeling.master.store.cache import WatchCache
from kubeling.v1 import core_pb2, meta_pb2
from tests.support.inprocess import serving

WATCH = "/kubeling.v1.Pods/Watch"


def big_pod(name: str) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = "default"
    # 16 KiB each: a few fill the stream's flow-control window.
    pod.metadata.annotations["bench.kubeling.io/pad"] = "x" * 16384
    pod.spec.containers.add(name="main", image="busybox:1.36")
    return pod


async def test_a_watcher_that_stops_reading_is_closed_and_the_others_go_on(
    tmp_path: Path,
) -> None:
    master = Master(
        MasterConfig(
            listen="127.0.0.1:0",
            data_dir=tmp_path / "master",
            controllers=set(),
            controller_settings=ControllerSettings(),
            tls=False,
        )
    )
    async with serving(master) as api:
        cache = master.store.cache  # type: ignore[attr-defined]
        assert isinstance(cache, WatchCache)
        cache._max_pending = 20  # watchers made from now on
        # No BDP probing: the stream's window stays at its initial 64 KiB, so the
        # master's sends stop early and the rest waits in the watch cache.
        async with grpc.aio.insecure_channel(
            api.target, options=[("grpc.http2.bdp_probe", 0)]
        ) as channel:
            request = meta_pb2.WatchRequest(namespace="default").SerializeToString()
            stream = channel.unary_stream(
                WATCH, response_deserializer=core_pb2.PodWatchEvent.FromString
            )
            slow = stream(request)
            reader = api.pods.watch("default")
            first = await asyncio.wait_for(reader.__anext__(), 10)
            assert first.type == "BOOKMARK"  # the initial list (empty) is over
            await asyncio.wait_for(slow.read(), 10)  # its bookmark: it is watching
            for i in range(100):
                await asyncio.wait_for(api.pods.create(big_pod(f"p{i}")), 10)
            # The reading watcher saw every create.
            seen = 0
            while seen < 100:
                event = await asyncio.wait_for(reader.__anext__(), 10)
                seen += event.type == "ADDED"
            await reader.aclose()  # type: ignore[attr-defined]
            # The slow one gets what was already on its way, then the reason.
            received = 0
            with pytest.raises(grpc.aio.AioRpcError) as closed:
                while True:
                    message = await asyncio.wait_for(slow.read(), 10)
                    assert message is not grpc.aio.EOF, "the stream ended without a status"
                    received += 1
            assert closed.value.code() == grpc.StatusCode.ABORTED
            assert "fell too far behind" in str(closed.value.details())
            assert "re-watch from the last revision" in str(closed.value.details())
            assert received < 100

        # Both watches are gone from the cache (the reader's once its cancel lands);
        # the master's own watches (namespaces, events) are on other prefixes.
        def pod_watches() -> int:
            return sum(w.prefix.startswith("/pods/") for w in cache._watchers)

        for _ in range(100):
            if not pod_watches():
                break
            await asyncio.sleep(0.05)
        assert pod_watches() == 0
