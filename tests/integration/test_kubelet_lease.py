"""The kubelet's Lease renewal against a real (in-process) master: one update per
renewal from the Lease it last wrote, as upstream's lease controller, and a read
first only when that update fails (the Lease changed or was deleted meanwhile).
At 5,000 hollow nodes a read before every renewal was half the master's lease
traffic."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from kubeling.client import Client
from kubeling.cri.fake import FakeRuntime
from kubeling.kubelet.node import LEASE_NAMESPACE, NodeAgent, NodeSettings
from tests.support.inprocess import in_process_master

pytestmark = pytest.mark.asyncio(loop_scope="session")


class CountingLeases:
    """api.leases with its calls counted by verb."""

    def __init__(self, leases: Any) -> None:
        self._leases = leases
        self.calls: Counter[str] = Counter()

    def __getattr__(self, verb: str) -> Any:
        method = getattr(self._leases, verb)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[verb] += 1
            return await method(*args, **kwargs)

        return call


async def test_renewals_update_the_last_written_lease_and_recover(tmp_path: Path) -> None:
    async with in_process_master(tmp_path) as api:
        counting = CountingLeases(api.leases)
        # Renewal uses only the client's leases: those, counted.
        node_api = cast(Client, SimpleNamespace(leases=counting))
        agent = NodeAgent(node_api, FakeRuntime(), NodeSettings("n1", "127.0.0.1", 0))

        first = await agent.renew_lease()
        assert counting.calls == Counter({"get": 1, "create": 1})  # none yet: made

        counting.calls.clear()
        second = await agent.renew_lease()
        third = await agent.renew_lease()
        assert counting.calls == Counter({"update": 2})  # no reads
        assert third.spec.renew_time.ToNanoseconds() >= second.spec.renew_time.ToNanoseconds()
        assert int(third.metadata.resource_version) > int(first.metadata.resource_version)

        # Someone else writes it: our update conflicts, we read it and renew.
        other = await api.leases.get("n1", LEASE_NAMESPACE)
        other.metadata.labels["touched"] = "yes"
        await api.leases.update(other)
        counting.calls.clear()
        renewed = await agent.renew_lease()
        assert counting.calls == Counter({"update": 2, "get": 1})
        assert renewed.metadata.labels["touched"] == "yes"
        assert renewed.spec.holder_identity == "n1"

        # Deleted: made again.
        await api.leases.delete("n1", LEASE_NAMESPACE)
        counting.calls.clear()
        again = await agent.renew_lease()
        assert counting.calls == Counter({"update": 1, "get": 1, "create": 1})
        assert again.spec.holder_identity == "n1"
        stored = await api.leases.get("n1", LEASE_NAMESPACE)
        assert stored.spec.renew_time == again.spec.renew_time
