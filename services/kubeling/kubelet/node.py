"""Register this node with the master, renew its Lease, post its conditions.

Ready follows the runtime: False with a reason while CRI Status fails or reports
the runtime or network not ready, and False (NetworkPluginNotReady) while the
kubelet has no pod network to give pods (`network_message`, set by the kubelet
until it knows the node's pod CIDR). MemoryPressure, DiskPressure and PIDPressure
come from measurements against Kubernetes' default hard eviction thresholds
(pressure.py). Conditions are posted every status interval or at once when they
change; the Lease is renewed every renew interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog

from kubeling import __version__
from kubeling.api.objects import clone, now
from kubeling.client import Client
from kubeling.common import machine
from kubeling.cri.errors import CRIError
from kubeling.cri.runtime import Runtime
from kubeling.kubelet import pressure
from kubeling.v1 import coordination_pb2, core_pb2, meta_pb2

log = structlog.get_logger(__name__)

LEASE_NAMESPACE = "kube-node-lease"


@dataclass
class NodeSettings:
    name: str
    node_ip: str
    kubelet_port: int
    pod_cidr: str = ""
    lease_duration: int = 40
    lease_renew_interval: float = 10.0
    status_interval: float = 10.0
    max_pods: int = 110
    # The kubelet's data (pod logs): its filesystem is the nodefs.
    nodefs: Path = field(default_factory=lambda: Path("/var/log/pods"))
    thresholds: pressure.Thresholds = field(default_factory=pressure.Thresholds)
    runtime_check_timeout: float = 5.0
    # How often the status loop asks the runtime whether it is healthy, between
    # status posts (a change posts at once). Hollow nodes, thousands in one
    # process on a runtime that never fails, ask far less often.
    runtime_check_interval: float = 1.0
    # A pressure condition stays True this long after its last crossing, so it does
    # not flap (upstream's --eviction-pressure-transition-period).
    pressure_transition_period: float = 300.0
    # Annotations the kubelet keeps on its Node (the local-path directory).
    annotations: dict[str, str] = field(default_factory=dict)


# (condition, True reason and message, False reason and message), as upstream's
# nodestatus setters word them.
_PRESSURE_CONDITIONS = (
    (
        "MemoryPressure",
        ("KubeletHasInsufficientMemory", "kubelet has insufficient memory available"),
        ("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ),
    (
        "DiskPressure",
        ("KubeletHasDiskPressure", "kubelet has disk pressure"),
        ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ),
    (
        "PIDPressure",
        ("KubeletHasInsufficientPID", "kubelet has insufficient PID available"),
        ("KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ),
)

SignalSource = Callable[[], pressure.Signals]


class NodeAgent:
    def __init__(
        self,
        api: Client,
        runtime: Runtime,
        settings: NodeSettings,
        signals: SignalSource | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`signals` measures the node (blocking; run in a thread); by default this
        machine's memory, PIDs, nodefs and the runtime's image filesystem."""
        self.api = api
        self.runtime = runtime
        self.settings = settings
        self._signals = signals
        self._clock = clock
        self._pressured_at: dict[str, float] = {}  # condition -> its last crossing
        self._imagefs: Path | None = None
        self._imagefs_known = False
        self.pressure = pressure.Pressure()
        # False while CRI calls fail (the kubelet's /healthz answers 503).
        self.runtime_reachable = True
        self._last_conditions: dict[str, tuple[str, str]] = {}
        self._runtime_version = ""
        self.ready = False
        self.node: core_pb2.Node | None = None
        self._lease: coordination_pb2.Lease | None = None  # as last written
        # Non-empty: the pod network is not ready (Ready=False, NetworkPluginNotReady).
        self.network_message = ""
        # Told about the Node whenever it is read (register, status posts), before
        # its conditions are computed: the kubelet picks up spec.podCIDR here.
        self.on_node: Callable[[core_pb2.Node], None] | None = None

    # ------------------------------------------------------------- conditions

    async def runtime_health(self) -> tuple[bool, str, str]:
        """(ready, reason, message) from CRI Status."""
        try:
            # The client retries an unreachable runtime for a while: bound the check.
            async with asyncio.timeout(self.settings.runtime_check_timeout):
                if not self._runtime_version:
                    version = await self.runtime.version()
                    self._runtime_version = f"{version.runtime_name}://{version.runtime_version}"
                status = await self.runtime.status()
        except CRIError as exc:
            return self._unreachable(exc.details)
        except TimeoutError:
            return self._unreachable(f"no answer in {self.settings.runtime_check_timeout}s")
        if not self.runtime_reachable:
            log.info("container runtime is back")
        self.runtime_reachable = True
        for condition in status.status.conditions:
            if not condition.status:
                what = "network" if condition.type == "NetworkReady" else "runtime"
                detail = condition.message or condition.reason
                return False, "KubeletNotReady", f"container {what} is not ready: {detail}"
        return True, "KubeletReady", "kubelet is posting ready status"

    def _unreachable(self, why: str) -> tuple[bool, str, str]:
        if self.runtime_reachable:
            log.warning("container runtime is down", error=why)
        self.runtime_reachable = False
        return False, "KubeletNotReady", f"container runtime is down: {why}"

    async def health(self) -> tuple[bool, str, str]:
        """(ready, reason, message): the runtime's health, then the pod network's."""
        return self._with_network(await self.runtime_health())

    def _with_network(self, health: tuple[bool, str, str]) -> tuple[bool, str, str]:
        if health[0] and self.network_message:
            return False, "NetworkPluginNotReady", self.network_message
        return health

    def _seen(self, node: core_pb2.Node) -> None:
        if self.on_node is not None:
            self.on_node(node)

    async def conditions(
        self, previous: core_pb2.Node | None, health: tuple[bool, str, str] | None = None
    ) -> list[meta_pb2.Condition]:
        """The node's conditions; `health` is a runtime check the caller just made."""
        ready, reason, message = self._with_network(health or await self.runtime_health())
        self.ready = ready
        found = await self.measure_pressure()
        at = self._clock()
        wanted = [("Ready", "True" if ready else "False", reason, message)]
        for (kind, when_true, when_false), signals in zip(
            _PRESSURE_CONDITIONS, (found.memory, found.disk, found.pid), strict=True
        ):
            if signals:
                self._pressured_at[kind] = at
            last = self._pressured_at.get(kind)
            recent = last is not None and at - last < self.settings.pressure_transition_period
            under = bool(signals) or recent
            wanted.append((kind, "True", *when_true) if under else (kind, "False", *when_false))
        old = {c.type: c for c in previous.status.conditions} if previous else {}
        stamp = now()
        result = []
        for kind, status, why, text in wanted:
            condition = meta_pb2.Condition(type=kind, status=status, reason=why, message=text)
            condition.last_heartbeat_time.CopyFrom(stamp)
            before = old.get(kind)
            if before is not None and before.status == status:
                condition.last_transition_time.CopyFrom(before.last_transition_time)
            else:
                condition.last_transition_time.CopyFrom(stamp)
            result.append(condition)
        return result

    async def measure_pressure(self) -> pressure.Pressure:
        """Measure the node against the eviction thresholds; on a failed
        measurement the last verdict stands."""
        try:
            source = self._signals or await self._machine_signals()
            signals = await asyncio.to_thread(source)
        except (OSError, ValueError, KeyError, IndexError) as exc:
            log.warning("node pressure not measured", error=repr(exc))
            return self.pressure
        found = pressure.pressure(signals, self.settings.thresholds)
        if found != self.pressure:
            log.info(
                "node pressure changed",
                memory=found.memory,
                disk=found.disk,
                pid=found.pid,
                memory_available=signals.memory_available,
                nodefs_available=signals.nodefs.available,
                imagefs_available=signals.imagefs.available,
                pid_available=signals.pid_available,
            )
        self.pressure = found
        return found

    async def _machine_signals(self) -> SignalSource:
        nodefs, imagefs = self.settings.nodefs, await self._image_fs()
        return lambda: pressure.measure(nodefs, imagefs)

    async def _image_fs(self) -> Path | None:
        """Where the runtime keeps images (CRI ImageFsInfo, asked once); None: on
        the nodefs, as upstream assumes without a dedicated image filesystem."""
        if self._imagefs_known:
            return self._imagefs
        ask = getattr(self.runtime, "image_fs_info", None)  # not every Runtime has it
        if ask is None:
            self._imagefs_known = True
            return None
        try:
            info = await ask()
        except CRIError as exc:
            if exc.unavailable:
                return None  # ask again next time
            self._imagefs_known = True  # e.g. UNIMPLEMENTED
            return None
        mounts = [fs.fs_id.mountpoint for fs in info.image_filesystems if fs.fs_id.mountpoint]
        self._imagefs = Path(mounts[0]) if mounts else None
        self._imagefs_known = True
        return self._imagefs

    def _status(self) -> core_pb2.NodeStatus:
        s = self.settings
        status = core_pb2.NodeStatus()
        status.capacity.update(machine.capacity(s.max_pods))
        status.allocatable.update(machine.capacity(s.max_pods))
        status.addresses.add(type="InternalIP", address=s.node_ip)
        status.addresses.add(type="Hostname", address=s.name)
        status.daemon_endpoints.kubelet_endpoint.port = s.kubelet_port
        status.node_info.CopyFrom(
            machine.system_info(self._runtime_version, f"kubeling/v{__version__}")
        )
        return status

    # ------------------------------------------------------------- register

    async def register(self) -> core_pb2.Node:
        """Create the Node, or take over the existing one with fresh status."""
        s = self.settings
        while True:
            # Learns the runtime's version for nodeInfo before the status is built.
            health = await self.runtime_health()
            status = self._status()
            try:
                existing = await self.api.nodes.get(s.name)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                node = core_pb2.Node()
                node.metadata.name = s.name
                node.metadata.labels.update(
                    {
                        "kubernetes.io/hostname": s.name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": status.node_info.architecture,
                    }
                )
                node.metadata.annotations.update(s.annotations)
                node.spec.pod_cidr = s.pod_cidr
                if s.pod_cidr:
                    node.spec.pod_cidrs.append(s.pod_cidr)
                self._seen(node)
                status.conditions.extend(await self.conditions(None, health))
                node.status.CopyFrom(status)
                try:
                    self.node = await self.api.nodes.create(node)
                except grpc.aio.AioRpcError as create_error:
                    if create_error.code() == grpc.StatusCode.ALREADY_EXISTS:
                        continue
                    raise
                log.info("node registered", node=s.name)
                return self.node
            stale = any(existing.metadata.annotations.get(k) != v for k, v in s.annotations.items())
            if (s.pod_cidr and not existing.spec.pod_cidr) or stale:
                updated = clone(existing)
                updated.metadata.annotations.update(s.annotations)
                if s.pod_cidr and not existing.spec.pod_cidr:
                    updated.spec.pod_cidr = s.pod_cidr
                    updated.spec.pod_cidrs.append(s.pod_cidr)
                existing = await self.api.nodes.update(updated)
            self._seen(existing)
            status.conditions.extend(await self.conditions(existing, health))
            fresh = clone(existing)
            fresh.status.CopyFrom(status)
            try:
                self.node = await self.api.nodes.update_status(fresh)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.ABORTED:
                    continue
                raise
            log.info("node re-registered", node=s.name)
            return self.node

    async def post_status(self) -> None:
        s = self.settings
        for _ in range(5):
            current = await self.api.nodes.get(s.name)
            self._seen(current)
            fresh = clone(current)
            del fresh.status.conditions[:]
            fresh.status.conditions.extend(await self.conditions(current))
            try:
                self.node = await self.api.nodes.update_status(fresh)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED:
                    raise

    async def status_loop(self) -> None:
        """Conditions every status interval, and at once when readiness changes
        (the runtime is checked every runtime_check_interval, 1 s by default)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.post_status()
            except grpc.aio.AioRpcError as exc:
                log.warning("node status not posted", error=exc.details())
            posted_ready = self.ready
            deadline = loop.time() + self.settings.status_interval
            while loop.time() < deadline:
                await asyncio.sleep(
                    min(self.settings.runtime_check_interval, self.settings.status_interval)
                )
                ready, _, _ = await self.health()
                if ready != posted_ready:
                    break

    # ------------------------------------------------------------- lease

    async def lease_loop(self) -> None:
        s = self.settings
        while True:
            try:
                await self.renew_lease()
            except grpc.aio.AioRpcError as exc:
                log.warning("lease not renewed", error=exc.details())
            await asyncio.sleep(s.lease_renew_interval)

    async def renew_lease(self) -> coordination_pb2.Lease:
        """One update from the Lease last written (as upstream's lease controller
        keeps latestLease): a read first only when there is none yet or the
        update failed (changed or deleted meanwhile)."""
        if self._lease is not None:
            lease = coordination_pb2.Lease()
            lease.CopyFrom(self._lease)
            self._lease = None
            self._renewed(lease)
            try:
                self._lease = await self.api.leases.update(lease)
                return self._lease
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND):
                    raise
        self._lease = await self._read_and_renew_lease()
        return self._lease

    def _renewed(self, lease: coordination_pb2.Lease) -> None:
        s = self.settings
        lease.spec.holder_identity = s.name
        lease.spec.lease_duration_seconds = s.lease_duration
        lease.spec.renew_time.CopyFrom(now())

    async def _read_and_renew_lease(self) -> coordination_pb2.Lease:
        s = self.settings
        try:
            lease = await self.api.leases.get(s.name, LEASE_NAMESPACE)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            lease = coordination_pb2.Lease()
            lease.metadata.name = s.name
            lease.metadata.namespace = LEASE_NAMESPACE
            self._renewed(lease)
            if self.node is not None:
                lease.metadata.owner_references.add(
                    api_version="v1", kind="Node", name=s.name, uid=self.node.metadata.uid
                )
            with contextlib.suppress(grpc.aio.AioRpcError):
                return await self.api.leases.create(lease)
            lease = await self.api.leases.get(s.name, LEASE_NAMESPACE)
        self._renewed(lease)
        return await self.api.leases.update(lease)
