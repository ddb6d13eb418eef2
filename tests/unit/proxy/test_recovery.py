"""The proxy recovers from a kernel that no longer matches its memory, and never
loses a full-sync request or a pod-CIDR change made while a sync runs."""

from __future__ import annotations

import pytest

from kubeling.proxy.nft import FakeNftables, NftError, Transaction
from kubeling.proxy.proxier import Proxier
from tests.unit.proxy.builders import full_dump, make_kube_proxy, sp


def test_a_table_removed_behind_the_proxys_back_is_rebuilt() -> None:
    backend = FakeNftables()
    proxier = Proxier(backend)
    a, b = sp("a", "10.96.0.1"), sp("b", "10.96.0.2")
    proxier.sync_full({"default/a": [a], "default/b": [b]})
    backend.table = None  # `nft flush ruleset` by someone else
    with pytest.raises(NftError):
        proxier.sync_partial({"default/b": []})
    # The recovery full sync rebuilds from scratch instead of deleting what is gone.
    proxier.sync_full({"default/a": [a]})
    assert backend.dump() == full_dump({"default/a": [a]})


class CidrChangingBackend(FakeNftables):
    """Applies, and meanwhile the node's pod CIDR changes (as from the informer)."""

    def __init__(self) -> None:
        super().__init__()
        self.during: list[object] = []

    def apply(self, tx: Transaction) -> None:
        super().apply(tx)
        for action in self.during:
            action()  # type: ignore[operator]
        self.during.clear()


def test_a_cidr_change_during_a_full_sync_is_applied_by_the_next() -> None:
    backend = CidrChangingBackend()
    proxier = Proxier(backend, "10.244.0.0/24")
    web = sp("web", "10.96.0.1")
    backend.during.append(lambda: setattr(proxier, "cluster_cidr", "10.244.7.0/24"))
    proxier.sync_full({"default/web": [web]})
    assert "10.244.0.0/24" in backend.dump()
    proxier.sync_full({"default/web": [web]})  # same ports: rules must not be reused
    assert "10.244.7.0/24" in backend.dump() and "10.244.0.0/24" not in backend.dump()


async def test_a_full_sync_request_made_during_a_sync_is_kept() -> None:
    backend = CidrChangingBackend()
    proxy = make_kube_proxy(backend)
    backend.during.append(lambda: setattr(proxy, "_needs_full", True))
    assert await proxy.sync_once(full=True)
    assert proxy._needs_full  # the request made meanwhile is still pending
    assert await proxy.sync_once(full=True)
    assert not proxy._needs_full
