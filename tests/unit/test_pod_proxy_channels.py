"""The master's cache of channels to kubelets stays bounded: least recently used
idle channels are closed beyond its size, idle ones after a timeout, and a channel
with a call in flight is never closed under it."""

from __future__ import annotations

import grpc

from kubeling.common import rpc
from kubeling.master.pod_proxy import ChannelCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Made:
    """Real (lazy) channels, remembered so the test can see which were closed."""

    def __init__(self) -> None:
        self.channels: dict[str, grpc.aio.Channel] = {}

    def __call__(self, address: str) -> grpc.aio.Channel:
        self.channels[address] = rpc.channel(address)
        return self.channels[address]

    def closed(self) -> set[str]:
        shut = grpc.ChannelConnectivity.SHUTDOWN
        return {a for a, c in self.channels.items() if c.get_state() == shut}


def address(i: int) -> str:
    return f"127.0.0.{i + 1}:10250"


async def test_least_recently_used_idle_channels_go_beyond_the_size() -> None:
    made, clock = Made(), Clock()
    cache = ChannelCache(made, max_size=3, idle_timeout=1e9, clock=clock)
    for i in range(3):
        async with cache.use(address(i)):
            pass
    async with cache.use(address(0)) as reused:  # 0 is now the most recently used
        assert reused is made.channels[address(0)]
    async with cache.use(address(3)):
        pass
    assert made.closed() == {address(1)}
    assert len(cache) == 3 and address(1) not in cache
    await cache.close()
    assert made.closed() == set(made.channels)


async def test_a_channel_in_use_is_never_closed() -> None:
    made, clock = Made(), Clock()
    cache = ChannelCache(made, max_size=1, idle_timeout=10, clock=clock)
    async with cache.use(address(0)):
        clock.now = 100
        async with cache.use(address(1)):
            pass  # over the size for a while: 0 is busy
        assert address(0) in cache and made.closed() == set()
    async with cache.use(address(2)):
        pass
    assert made.closed() == {address(0), address(1)}
    await cache.close()


async def test_idle_channels_are_closed_after_the_timeout() -> None:
    made, clock = Made(), Clock()
    cache = ChannelCache(made, max_size=10, idle_timeout=300, clock=clock)
    async with cache.use(address(0)):
        pass
    clock.now = 200
    async with cache.use(address(1)):
        pass
    clock.now = 301
    async with cache.use(address(1)):
        pass
    assert made.closed() == {address(0)}
    assert len(cache) == 1
    await cache.close()
