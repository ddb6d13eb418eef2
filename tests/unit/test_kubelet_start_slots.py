"""Start slots (kubelet/steps/base.py): at most N pods start at once, a pod that
already has its sandbox goes first, and cancelled waiters lose no slot."""

from __future__ import annotations

import asyncio

import pytest

from kubeling.kubelet.steps import SlotLease, StartSlots


async def take(lease: SlotLease, order: list[str], name: str, resume: bool) -> None:
    await lease.acquire(resume=resume)
    order.append(name)
    lease.release()


async def test_a_pod_back_from_a_pull_goes_before_new_pods() -> None:
    slots = StartSlots(1)
    holder = slots.lease()
    await holder.acquire()
    order: list[str] = []
    waiting = [
        asyncio.create_task(take(slots.lease(), order, "new-1", resume=False)),
        asyncio.create_task(take(slots.lease(), order, "new-2", resume=False)),
        asyncio.create_task(take(slots.lease(), order, "resumed", resume=True)),
    ]
    await asyncio.sleep(0)  # let each reach its wait
    assert slots.in_use == 1 and order == []
    holder.release()
    await asyncio.gather(*waiting)
    assert order == ["resumed", "new-1", "new-2"]
    assert slots.in_use == 0


async def test_no_more_than_the_limit_hold_slots() -> None:
    slots = StartSlots(2)
    leases = [slots.lease() for _ in range(3)]
    await leases[0].acquire()
    await leases[1].acquire()
    third = asyncio.create_task(leases[2].acquire())
    await asyncio.sleep(0)
    assert not third.done() and slots.in_use == 2
    leases[0].release()
    await third
    assert leases[2].held and slots.in_use == 2
    leases[1].release()
    leases[2].release()
    leases[2].release()  # idempotent
    assert slots.in_use == 0


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    slots = StartSlots(1)
    holder = slots.lease()
    await holder.acquire()
    gone = asyncio.create_task(slots.lease().acquire())
    after = slots.lease()
    waiting = asyncio.create_task(after.acquire())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    holder.release()
    await waiting
    assert after.held and slots.in_use == 1
    after.release()
    assert slots.in_use == 0
