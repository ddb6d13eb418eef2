"""The kubelet's /healthz: 200 until a supervised loop gives up or the runtime
stops answering CRI."""

from __future__ import annotations

import grpc

from kubeling.client import Client
from kubeling.cri.errors import CRIError
from kubeling.cri.fake import FakeRuntime
from kubeling.kubelet.kubelet import RELIST_THRESHOLD, Kubelet, KubeletConfig
from kubeling.kubelet.main import healthy
from kubeling.kubelet.node import NodeAgent, NodeSettings


async def test_healthz_follows_the_supervisor_and_the_runtime() -> None:
    runtime = FakeRuntime()
    async with Client("127.0.0.1:1") as api:  # never called
        kubelet = Kubelet(KubeletConfig(master="127.0.0.1:1", node_name="n1"), runtime, api)
        assert healthy(kubelet)  # not registered yet: nothing known to be wrong
        kubelet.agent = NodeAgent(api, runtime, NodeSettings("n1", "127.0.0.1", 10250))
        assert (await kubelet.agent.runtime_health())[0]
        assert healthy(kubelet)
        unavailable = CRIError(grpc.StatusCode.UNAVAILABLE, "connection refused")
        runtime.inject_error("status", unavailable)  # the runtime stops answering
        assert not (await kubelet.agent.runtime_health())[0]
        assert not healthy(kubelet)
        assert (await kubelet.agent.runtime_health())[0]  # it answers again
        assert healthy(kubelet)
        kubelet.supervisor.failed.set()  # a loop gave up
        assert not healthy(kubelet)


async def test_healthz_fails_when_the_relist_loop_stops_going_round() -> None:
    # Upstream's PLEG check: a relist loop silent for RELIST_THRESHOLD is unhealthy.
    async with Client("127.0.0.1:1") as api:  # never called
        kubelet = Kubelet(KubeletConfig(master="127.0.0.1:1", node_name="n1"), FakeRuntime(), api)
        assert healthy(kubelet)
        kubelet.relist_seen -= RELIST_THRESHOLD + 1
        assert not healthy(kubelet)
