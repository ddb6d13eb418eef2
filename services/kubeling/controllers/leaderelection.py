"""Leader election on a Lease, as client-go's leaderelection package does it.

Several controller managers may run; only the one holding the Lease
`kube-system/kubeling-controller-manager` runs the controllers:

    elector = LeaderElector(api, identity="master-1")
    await elector.run(lambda: run_controllers(...))

Every write is an optimistic update on the Lease's resourceVersion, so two
candidates can never both think they acquired it. Expiry is judged by when *we*
last saw the Lease change (a local monotonic clock), not by the renewTime in
it, so clock skew between machines does not matter.

With a `supervisor`, the renewal loop runs supervised (`leader-renew`): an
unexpected error in it is logged, counted and the loop restarted within the renew
deadline, rather than silently ending the leadership. `leader_election_master_status`
(1 while leading) is Kubernetes' gauge of the same name.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Gauge

from kubeling.api.objects import clone, now
from kubeling.client.client import Client
from kubeling.common.supervisor import LoopFailed, Supervisor
from kubeling.v1 import coordination_pb2

log = structlog.get_logger(__name__)

LEADER_STATUS = Gauge(
    "leader_election_master_status",
    "1 while this process holds the leader Lease `name`, 0 otherwise",
    ["name"],
)


class LeaderElector:
    def __init__(
        self,
        api: Client,
        name: str = "kubeling-controller-manager",
        namespace: str = "kube-system",
        identity: str = "",
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        release_on_cancel: bool = True,
        supervisor: Supervisor | None = None,
    ) -> None:
        if not lease_duration > renew_deadline > retry_period > 0:
            raise ValueError("need lease_duration > renew_deadline > retry_period > 0")
        self.api = api
        self.name = name
        self.namespace = namespace
        self.identity = identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.release_on_cancel = release_on_cancel
        self.supervisor = supervisor
        self._leading = False
        # The last Lease content we saw and when (monotonic), for expiry.
        self._observed: coordination_pb2.Lease | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0

    @property
    def is_leader(self) -> bool:
        return self._leading

    def _set_leading(self, leading: bool) -> None:
        self._leading = leading
        LEADER_STATUS.labels(self.name).set(1 if leading else 0)

    def _renewal(self) -> Coroutine[Any, Any, None]:
        if self.supervisor is None:
            return self._keep_renewing()
        return self.supervisor.supervise("leader-renew", self._keep_renewing)

    @property
    def holder(self) -> str:
        """The holder of the Lease as last seen ("" when unknown or free)."""
        return self._observed.spec.holder_identity if self._observed is not None else ""

    async def run(self, on_started_leading: Callable[[], Awaitable[None]]) -> None:
        """Campaign, run the work while leading, cancel it when leadership is lost
        and campaign again. Returns when the work returns by itself (after
        releasing the Lease); cancelling run() cancels the work and releases."""
        try:
            while True:
                await self._acquire()
                log.info("became leader", lease=self.name, identity=self.identity)
                work = asyncio.ensure_future(on_started_leading())
                renew = asyncio.create_task(self._renewal(), name="leader-renew")
                try:
                    await asyncio.wait({work, renew}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (work, renew):
                        task.cancel()
                    for task in (work, renew):
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
                    self._set_leading(False)
                if renew.done() and not renew.cancelled():
                    error = renew.exception()
                    if isinstance(error, LoopFailed):
                        raise error  # the supervised renewal crashed too often
                    if error is not None:
                        log.error("lease renewal failed; work stopped", exc_info=error)
                    else:
                        log.warning("leadership lost; work stopped", lease=self.name)
                    continue
                # The work ended on its own: hand the Lease over and stop.
                await self._release()
                exc = work.exception() if not work.cancelled() else None
                if exc is not None:
                    raise exc
                return
        except asyncio.CancelledError:
            if self.release_on_cancel:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._release())
            raise

    async def _acquire(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
                if await asyncio.wait_for(self._try_acquire_or_renew(), self.renew_deadline):
                    self._set_leading(True)
                    self._renewed_at = time.monotonic()
                    return
            await asyncio.sleep(self.retry_period)

    async def _keep_renewing(self) -> None:
        """Returns when leadership is lost: no successful renewal within
        renew_deadline, or someone else holds the Lease."""
        while True:
            await asyncio.sleep(self.retry_period)
            while True:
                remaining = self._renewed_at + self.renew_deadline - time.monotonic()
                if remaining <= 0:
                    return
                renewed = False
                with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
                    renewed = await asyncio.wait_for(self._try_acquire_or_renew(), remaining)
                if renewed:
                    self._renewed_at = time.monotonic()
                    break
                if self.holder and self.holder != self.identity:
                    return  # taken over: stop at once rather than at the deadline
                await asyncio.sleep(min(self.retry_period, max(remaining, 0.0)))

    def _observe(self, lease: coordination_pb2.Lease) -> None:
        previous = self._observed
        if previous is None or previous.spec != lease.spec:
            self._observed_at = time.monotonic()
        self._observed = lease

    def _expired(self, lease: coordination_pb2.Lease) -> bool:
        if not lease.spec.holder_identity:
            return True  # released
        duration = lease.spec.lease_duration_seconds or self.lease_duration
        return self._observed_at + duration < time.monotonic()

    async def _try_acquire_or_renew(self) -> bool:
        stamp = now()
        try:
            lease = await self.api.leases.get(self.name, self.namespace)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            fresh = coordination_pb2.Lease()
            fresh.metadata.name = self.name
            fresh.metadata.namespace = self.namespace
            self._fill(fresh, stamp, transitions=0)
            try:
                created = await self.api.leases.create(fresh)
            except grpc.aio.AioRpcError as create_exc:
                if create_exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                    return False  # someone else won the race
                raise
            self._observe(created)
            return True
        self._observe(lease)
        ours = lease.spec.holder_identity == self.identity
        if not ours and not self._expired(lease):
            return False
        updated = clone(lease)
        if ours:
            updated.spec.renew_time.CopyFrom(stamp)
            updated.spec.lease_duration_seconds = _seconds(self.lease_duration)
        else:
            self._fill(updated, stamp, transitions=lease.spec.lease_transitions + 1)
        try:
            # The read's resourceVersion rides along: a concurrent writer wins
            # and we get ABORTED (conflict) instead of both acquiring.
            written = await self.api.leases.update(updated)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND):
                return False
            raise
        self._observe(written)
        return True

    def _fill(self, lease: coordination_pb2.Lease, stamp: Timestamp, transitions: int) -> None:
        spec = lease.spec
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = _seconds(self.lease_duration)
        spec.acquire_time.CopyFrom(stamp)
        spec.renew_time.CopyFrom(stamp)
        spec.lease_transitions = transitions

    async def _release(self) -> None:
        """Give the Lease up so a standby need not wait for it to expire."""
        try:
            lease = await self.api.leases.get(self.name, self.namespace)
            if lease.spec.holder_identity != self.identity:
                return
            released = clone(lease)
            released.spec.holder_identity = ""
            released.spec.lease_duration_seconds = 1
            released.spec.renew_time.CopyFrom(now())
            await self.api.leases.update(released)
            log.info("leader lease released", lease=self.name, identity=self.identity)
        except grpc.aio.AioRpcError as exc:
            log.info("leader lease not released", lease=self.name, error=exc.details())


def _seconds(duration: float) -> int:
    # The Lease stores whole seconds; round up so it never claims less than we wait.
    return max(1, math.ceil(duration))
