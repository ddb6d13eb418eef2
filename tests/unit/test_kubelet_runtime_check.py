"""The node status loop asks the runtime for its health every
runtime_check_interval (1 s for a kubelet; hollow nodes, thousands on a fake
runtime in one process, ask every 30 s), and posts at once when it turns."""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

from kubeling.client import Client
from kubeling.cri.api import pb
from kubeling.cri.fake import FakeRuntime
from kubeling.kubelet.hollow import HollowSettings
from kubeling.kubelet.node import NodeAgent, NodeSettings


class CountingRuntime(FakeRuntime):
    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    async def status(self, verbose: bool = False) -> pb.StatusResponse:
        self.checks += 1
        return await super().status(verbose)


async def checks_in(interval: float, seconds: float) -> tuple[int, int]:
    runtime = CountingRuntime()
    settings = NodeSettings("n1", "127.0.0.1", 0, status_interval=3600.0)
    settings.runtime_check_interval = interval
    agent = NodeAgent(cast(Client, None), runtime, settings)
    posts = 0

    async def post_status() -> None:
        nonlocal posts
        posts += 1
        agent.ready = True

    agent.post_status = post_status  # type: ignore[method-assign]
    task = asyncio.create_task(agent.status_loop())
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return runtime.checks, posts


async def test_runtime_is_checked_every_interval() -> None:
    checks, posts = await checks_in(0.05, 0.5)
    assert 6 <= checks <= 11
    assert posts == 1  # healthy all along: no post besides the first
    slow, _ = await checks_in(1.0, 0.5)
    assert slow == 0


def test_hollow_nodes_check_seldom() -> None:
    assert HollowSettings().runtime_check_interval >= 10.0
    assert NodeSettings("n1", "127.0.0.1", 0).runtime_check_interval == 1.0
