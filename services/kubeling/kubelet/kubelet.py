"""The kubelet: watches the pods bound to its node and runs them through CRI.

Pieces (each testable alone):
- `NodeAgent` (node.py): Node registration, Lease renewal, conditions.
- `Relister` (runtime_state.py): what the runtime runs, found by labels.
- `PodWorkers` (workers.py): one worker per pod acting on the latest state
  (syncing → terminating → terminated).
- `PodSyncer` (sync.py): the steps (steps/) that bring one pod to its desired state.
- `compute_status` (status.py): pod status posted to the master on change.
- `ProbeManager` (probes.py), `Backoff` (backoff.py).
- `KubeletService` (server.py): the kubelet's gRPC API (logs, exec, stats),
  TLS from the node's credential directory, for the master only.
- `CertificateRenewer` (client/bootstrap.py): the node certificate renewed
  before it expires; the API server re-reads it, the client switches channels.

Its long-running loops (pod watch, relist, volume refresh, pod workers, node status, lease, pod
CIDR, pod routes and certificate renewal) run under `self.supervisor`: a crash
is logged, counted and restarted; a loop that keeps crashing sets `supervisor.failed` (main exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from kubeling.api import storage as st
from kubeling.api.objects import clone
from kubeling.client import Client
from kubeling.client.bootstrap import CertificateRenewer
from kubeling.client.events import EventRecorder
from kubeling.client.informer import Informer
from kubeling.common.rpc import Server
from kubeling.common.supervisor import Supervisor
from kubeling.common.tls import CredentialDir
from kubeling.cri.errors import CRIError
from kubeling.cri.runtime import Runtime
from kubeling.kubelet import metrics
from kubeling.kubelet.backoff import Backoff
from kubeling.kubelet.directory import ContainerRef
from kubeling.kubelet.dns import DNSSettings
from kubeling.kubelet.localpath import LocalPathCleaner
from kubeling.kubelet.node import NodeAgent, NodeSettings
from kubeling.kubelet.probes import ProbeManager
from kubeling.kubelet.routes import PodRouteSync
from kubeling.kubelet.runtime_state import Relister, RuntimePod
from kubeling.kubelet.server import KubeletService, kubelet_server
from kubeling.kubelet.status import TERMINAL_PHASES, StatusInputs, Waiting, compute_status
from kubeling.kubelet.steps import SyncResult, grace_period
from kubeling.kubelet.sync import PodSyncer
from kubeling.kubelet.volumes import ApiObjects, VolumeError, VolumeManager, needs_refresh
from kubeling.kubelet.workers import PodWorkers
from kubeling.node.cni import write_bridge_cni_config
from kubeling.v1 import core_pb2

log = structlog.get_logger(__name__)

# As upstream's PLEG: a relist loop silent this long makes the kubelet unhealthy.
RELIST_THRESHOLD = 180.0

NO_POD_CIDR_MESSAGE = "network not ready: no pod CIDR assigned"


@dataclass
class KubeletConfig:
    master: str
    node_name: str
    runtime_endpoint: str = "unix:///run/containerd/containerd.sock"
    listen: str = "0.0.0.0:10250"
    node_ip: str = ""
    pod_cidr: str = ""
    pod_log_dir: Path = field(default_factory=lambda: Path("/var/log/pods"))
    relist_period: float = 1.0
    status_interval: float = 10.0
    runtime_check_interval: float = 1.0  # between runtime health checks (node.py)
    lease_duration: int = 40
    lease_renew_interval: float = 10.0
    backoff_initial: float = 10.0
    backoff_max: float = 300.0
    backoff_reset: float = 600.0
    max_pods: int = 110
    # Where to write this node's bridge CNI config once its pod CIDR is known
    # (the Node's spec.podCIDR, else --pod-cidr); None: managed elsewhere. Until
    # it is written the node is not Ready and pods get no sandbox.
    cni_conf_dir: Path | None = None
    # host-local's lease files; its "last reserved" pointer is per network name, so
    # nodes on one filesystem sharing it would hand out just-freed addresses again.
    cni_ipam_dir: Path | None = None
    cluster_cidr: str = "10.244.0.0/16"
    # Routed from pods through their gateway (the node), where kube-proxy DNATs.
    service_cidr: str = "10.96.0.0/12"
    # Route to the other nodes' pod CIDRs via their addresses (nodes on one L2).
    sync_pod_routes: bool = False
    # The node's certificate, key and the cluster CA: the kubelet API serves TLS
    # from here (re-read after renewal) to the master only. None: plaintext, on
    # loopback only (--insecure, tests).
    credentials: CredentialDir | None = None
    # Network namespace (a path) of the runtime's streaming server (exec -it, attach,
    # port-forward) when it is not the kubelet's own, as with a test's containerd.
    runtime_stream_netns: str = ""
    # Pods' resolv.conf (kubelet/dns.py): --cluster-dns (empty: pods use the
    # node's resolver), --cluster-domain, --resolv-conf.
    dns: DNSSettings = field(default_factory=DNSSettings)
    # Per-pod state (volumes) under ROOT/pods/UID (--root-dir).
    root_dir: Path = field(default_factory=lambda: Path("/var/lib/kubeling/kubelet"))
    # Where local-path volumes live on this node (--local-path-dir; None: ROOT/storage).
    local_path_dir: Path | None = None
    # How often pods with configMap/secret/downwardAPI/projected volumes are
    # synced to refresh their files (a changed ConfigMap reaches them within it).
    volume_refresh_period: float = 10.0


def _registration_failed(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    if isinstance(error, grpc.aio.AioRpcError):
        log.warning(
            "registering the node failed; retrying",
            code=error.code().name,
            error=error.details(),
            attempt=state.attempt_number,
        )


class Kubelet:
    def __init__(
        self,
        config: KubeletConfig,
        runtime: Runtime,
        api: Client,
        renewer: CertificateRenewer | None = None,
    ) -> None:
        """`renewer`: renews the node certificate (a supervised loop)."""
        self.config = config
        self.renewer = renewer
        self.node_name = config.node_name
        self.runtime = runtime
        self.api = api
        self.recorder = EventRecorder(api, "kubelet", config.node_name)
        self.desired: dict[str, core_pb2.Pod] = {}
        self.runtime_pods: dict[str, RuntimePod] = {}
        self.relist_seen = time.monotonic()  # the relist loop's last round
        self.posted: dict[str, core_pb2.PodStatus] = {}
        self.relister = Relister(runtime)
        # Wall-clock: the syncer compares with CRI timestamps (finishedAt).
        self.backoff = Backoff(
            config.backoff_initial, config.backoff_max, config.backoff_reset, clock=time.time
        )
        self.image_backoff = Backoff(
            config.backoff_initial, config.backoff_max, config.backoff_reset, clock=time.time
        )
        self.probes = ProbeManager(runtime, on_change=self._probe_changed)
        self.objects = ApiObjects(api)
        self.volumes = VolumeManager(
            config.root_dir,
            self.objects,
            node_name=config.node_name,
            local_path_dir=config.local_path_dir,
        )
        self.syncer = PodSyncer(
            runtime=runtime,
            log_root=config.pod_log_dir,
            host_ip=config.node_ip,
            backoff=self.backoff,
            image_backoff=self.image_backoff,
            recorder=self.recorder,
            probes=self.probes,
            dns=config.dns,
            volumes=self.volumes,
            objects=self.objects,
        )
        self.workers = PodWorkers(self._sync, self._termination_grace)
        # The pods bound to this node, as the master has them.
        self.pod_informer = Informer(api.pods, field_selector=f"spec.nodeName={self.node_name}")
        self.pod_informer.add_handler(self._pod_event)
        self.synced = self.pod_informer.synced  # the first full list of our pods arrived
        self.supervisor = Supervisor("kubelet")
        self.server: Server | None = None
        self.agent: NodeAgent | None = None
        self._cni_cidr = ""  # the pod CIDR the CNI config was written for
        self._network_waiting: set[str] = set()  # pods told that the network is not ready

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        port = 10250
        if self.config.listen:  # hollow nodes run without the kubelet API
            service = KubeletService(
                self, self.runtime, stream_netns=self.config.runtime_stream_netns
            )
            self.server = kubelet_server(self.config.listen, service, self.config.credentials)
            await self.server.start()
            port = int(self.server.port)
        settings = NodeSettings(
            name=self.node_name,
            node_ip=self.config.node_ip,
            kubelet_port=port,
            # With TLS the master's IPAM alone sets spec.podCIDR (a node may not):
            # --pod-cidr then only serves the CNI config while none is assigned.
            pod_cidr=self.config.pod_cidr if self.config.credentials is None else "",
            lease_duration=self.config.lease_duration,
            lease_renew_interval=self.config.lease_renew_interval,
            status_interval=self.config.status_interval,
            runtime_check_interval=self.config.runtime_check_interval,
            max_pods=self.config.max_pods,
            nodefs=self.config.pod_log_dir,
            # Where the local-path provisioner puts this node's volumes.
            annotations={st.LOCAL_PATH_DIR_ANNOTATION: str(self.volumes.local_path_dir.absolute())},
        )
        self.agent = NodeAgent(self.api, self.runtime, settings)
        self.agent.on_node = self._node_seen  # writes the CNI config once a CIDR shows
        if self.config.cni_conf_dir is not None:
            self.agent.network_message = NO_POD_CIDR_MESSAGE
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(grpc.aio.AioRpcError),
            wait=wait_exponential(multiplier=0.2, max=5),
            before_sleep=_registration_failed,
        ):
            with attempt:
                await self.agent.register()
        agent = self.agent
        supervisor = self.supervisor
        if self.renewer is not None:
            supervisor.start("certificate-renewal", self.renewer.run)
        supervisor.start("pod-workers", self.workers.run)
        supervisor.start("pod-watch", self.pod_informer.run)
        supervisor.start("relist", self._relist_loop)
        supervisor.start("volume-refresh", self._volume_refresh_loop)
        cleaner = LocalPathCleaner(self.api, self.node_name, self.volumes, self.recorder)
        supervisor.start("local-path-cleanup", cleaner.run)
        supervisor.start("node-status", agent.status_loop)
        supervisor.start("lease", agent.lease_loop)
        if self.config.cni_conf_dir is not None and not self._cni_cidr:
            log.info("waiting for the node's pod CIDR", node=self.node_name)
            supervisor.start("pod-cidr", self._follow_pod_cidr)
        if self.config.sync_pod_routes:
            supervisor.start("pod-routes", PodRouteSync(self.api, self.node_name).run)
        log.info("kubelet started", node=self.node_name, port=port)

    # ------------------------------------------------------------ pod network

    def _node_seen(self, node: core_pb2.Node) -> None:
        """Write the CNI config when the node's pod CIDR is first known (the
        master's node IPAM may assign it after registration)."""
        pod_cidr = node.spec.pod_cidr or self.config.pod_cidr
        conf_dir = self.config.cni_conf_dir
        if conf_dir is None or not pod_cidr or pod_cidr == self._cni_cidr:
            return
        try:
            write_bridge_cni_config(
                conf_dir,
                pod_cidr=pod_cidr,
                routes=[self.config.cluster_cidr, self.config.service_cidr],
                ipam_data_dir=(
                    str(self.config.cni_ipam_dir) if self.config.cni_ipam_dir is not None else None
                ),
            )
        except (OSError, ValueError) as exc:
            log.error("CNI config not written", pod_cidr=pod_cidr, error=str(exc))
            return
        self._cni_cidr = pod_cidr
        log.info("CNI config written", pod_cidr=pod_cidr, dir=str(conf_dir))
        if self.agent is not None:
            self.agent.network_message = ""
        self._network_waiting.clear()
        for uid in list(self.desired):
            self.workers.update(uid)  # pods held back for the network may start now

    async def _follow_pod_cidr(self) -> None:
        """Watch our Node until it has a pod CIDR, then post Ready at once."""
        informer = Informer(self.api.nodes, field_selector=f"metadata.name={self.node_name}")
        changed = asyncio.Event()
        informer.add_handler(lambda kind, old, new: changed.set())
        watch = asyncio.create_task(informer.run(), name="kubelet-node-watch")
        try:
            while not self._cni_cidr:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.status_interval):
                        await changed.wait()
                changed.clear()
                node = informer.get("", self.node_name)
                if node is not None:
                    self._node_seen(node)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        if self.agent is not None:
            try:
                await self.agent.post_status()
            except grpc.aio.AioRpcError as exc:
                log.warning("node status not posted", error=exc.details())

    def _network_blocks(self, pod: core_pb2.Pod, current: RuntimePod | None) -> bool:
        """A pod needing a new sandbox on the pod network must wait for it."""
        message = self.agent.network_message if self.agent is not None else ""
        if not message or pod.spec.host_network or pod.metadata.HasField("deletion_timestamp"):
            return False
        sandbox = current.sandbox if current is not None else None
        if sandbox is not None and sandbox.ready:
            return False
        if pod.metadata.uid not in self._network_waiting:
            self._network_waiting.add(pod.metadata.uid)
            self.recorder.record(pod, "Warning", "NetworkNotReady", message)
        return True

    async def stop(self) -> None:
        """Stop the kubelet's loops; the pods keep running (a restarted kubelet
        adopts them)."""
        await self.supervisor.stop()  # the pod workers stop with their loop
        await self.probes.close()
        await self.recorder.flush()
        if self.server is not None:
            await self.server.stop(0.5)

    # ------------------------------------------------------------ watching

    def _pod_event(self, kind: str, old: core_pb2.Pod | None, new: core_pb2.Pod | None) -> None:
        """Keep `desired` equal to the master's pods bound to this node (the pod
        informer's handler) and wake each changed pod's worker."""
        if kind == "DELETED":
            gone = new if new is not None else old
            if gone is not None:
                self.desired.pop(gone.metadata.uid, None)
                self.workers.update(gone.metadata.uid)
            return
        assert new is not None
        if old is not None and old.metadata.uid != new.metadata.uid:
            # Deleted and made again under the same name while we were not watching.
            self.desired.pop(old.metadata.uid, None)
            self.workers.update(old.metadata.uid)
        self.desired[new.metadata.uid] = new
        self.workers.update(new.metadata.uid)

    def _termination_grace(self, uid: str) -> int | None:
        """The grace period the pod is to be stopped with; None while it should run
        (or while the kubelet does not know yet whether it is ours)."""
        pod = self.desired.get(uid)
        if pod is None:
            return grace_period(None) if self.synced.is_set() else None
        if pod.metadata.HasField("deletion_timestamp"):
            return grace_period(pod)
        return None

    async def _relist_loop(self) -> None:
        while True:
            try:
                started = time.perf_counter()
                pods = await self.relister.relist()
                metrics.observe_relist(pods, time.perf_counter() - started)
                changed = {
                    uid
                    for uid in set(pods) | set(self.runtime_pods)
                    if uid not in pods
                    or uid not in self.runtime_pods
                    or pods[uid].key() != self.runtime_pods[uid].key()
                }
                self.runtime_pods = pods
                if self.synced.is_set():
                    # Pods whose runtime state changed, and sandboxes of pods that
                    # are no longer bound here (removed by their worker).
                    for uid in changed | (set(pods) - set(self.desired)):
                        self.workers.update(uid)
            except CRIError as exc:
                log.warning("relist failed", error=exc.details)
            self.relist_seen = time.monotonic()
            await asyncio.sleep(self.config.relist_period)

    async def _volume_refresh_loop(self) -> None:
        """Wake the pods whose volume files follow API objects (their sync rewrites
        what changed), and remove volume directories no pod owns any more (left by
        a pod removed while the kubelet was away)."""
        while True:
            await asyncio.sleep(self.config.volume_refresh_period)
            for uid, pod in list(self.desired.items()):
                live = pod.status.phase not in TERMINAL_PHASES
                if live and needs_refresh(pod) and not pod.metadata.HasField("deletion_timestamp"):
                    self.workers.update(uid)
            if not self.synced.is_set():
                continue
            for uid in self.volumes.known_pods():
                if uid not in self.desired and uid not in self.runtime_pods:
                    try:
                        await self.volumes.teardown(uid)
                    except (OSError, VolumeError) as exc:
                        log.warning("orphaned pod volumes not removed", uid=uid, error=str(exc))

    def relist_active(self) -> bool:
        """Upstream's PLEG health: the relist loop went round within the last
        RELIST_THRESHOLD seconds (a loop stuck or gone makes the kubelet unhealthy)."""
        return time.monotonic() - self.relist_seen <= RELIST_THRESHOLD

    def _probe_changed(self, pod_uid: str, container: str, kind: str, value: bool) -> None:
        self.workers.update(pod_uid)

    # ------------------------------------------------------------ syncing

    async def _sync(self, uid: str) -> SyncResult:
        pod = self.desired.get(uid)
        if pod is None and not self.synced.is_set():
            return SyncResult(retry_after=1.0)  # not sure yet whether it is ours
        if pod is not None and pod.metadata.HasField("deletion_timestamp"):
            self.probes.remove_pod(uid)  # a pod being deleted is not restarted
        current = (await self.relister.relist(uid)).get(uid)
        if pod is not None and self._network_blocks(pod, current):
            return SyncResult(retry_after=1.0)
        result = await self.syncer.sync(uid, pod, current)
        if pod is None:
            # Gone from the master: nothing of it stays (the syncer forgot its part).
            self.probes.remove_pod(uid)
            self.posted.pop(uid, None)
            self.runtime_pods.pop(uid, None)
            self._network_waiting.discard(uid)
            return result
        if result.done:
            self.probes.remove_pod(uid)
            self._network_waiting.discard(uid)
            await self._finalize(pod)
            return result
        fresh = (await self.relister.relist(uid)).get(uid)
        if fresh is not None:
            self.runtime_pods[uid] = fresh
        self._update_probes(pod, fresh)
        await self._post_status(pod, fresh)
        return result

    def _update_probes(self, pod: core_pb2.Pod, current: RuntimePod | None) -> None:
        sandbox = current.sandbox if current else None
        if current is None or sandbox is None:
            return
        containers: dict[str, str] = {}
        for spec in pod.spec.containers:
            latest = current.latest(spec.name, sandbox.id)
            if latest is not None and latest.running:
                containers[spec.name] = latest.id
        # A hostNetwork pod is probed on its node's address (its sandbox has none).
        pod_ip = self.config.node_ip if pod.spec.host_network else sandbox.ip
        self.probes.add_pod(pod, containers, pod_ip)

    async def _finalize(self, pod: core_pb2.Pod) -> None:
        """Containers are stopped: remove the pod object (grace 0) on the master."""
        try:
            await self.api.pods.delete(
                pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0,
                uid=pod.metadata.uid,
            )  # fmt: skip
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ABORTED):
                raise
        self.posted.pop(pod.metadata.uid, None)

    def status_of(self, pod: core_pb2.Pod, current: RuntimePod | None) -> core_pb2.PodStatus:
        uid = pod.metadata.uid
        with_previous = clone(pod)
        previous = self.posted.get(uid)
        if previous is not None:
            with_previous.status.CopyFrom(previous)
        waiting = self.syncer.waiting.get(uid, {})

        def waiting_of(name: str) -> Waiting | None:
            return waiting.get(name)

        def ready(name: str) -> bool:
            return bool(self.probes.readiness(uid, name))

        def started(name: str) -> bool:
            return self.probes.startup_done(uid, name)

        return compute_status(
            StatusInputs(with_previous, current, self.config.node_ip, ready, started, waiting_of)
        )

    async def _post_status(self, pod: core_pb2.Pod, current: RuntimePod | None) -> None:
        uid = pod.metadata.uid
        status = self.status_of(pod, current)
        if self.posted.get(uid) == status:
            return
        update = core_pb2.Pod()
        update.metadata.name = pod.metadata.name
        update.metadata.namespace = pod.metadata.namespace
        update.metadata.uid = uid
        update.status.CopyFrom(status)
        try:
            await self.api.pods.update_status(update)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ABORTED):
                return  # gone or replaced: its DELETED event is on the way
            raise
        self.posted[uid] = status
        if status.phase == "Running":
            self.syncer.mark(uid, "running_posted")
            self._observe_start(pod, status)

    def _observe_start(self, pod: core_pb2.Pod, status: core_pb2.PodStatus) -> None:
        """Pod start-up latency, once per pod this kubelet started: from its first
        sync to every container running (pods adopted running are not counted)."""
        milestones = self.syncer.milestones.get(pod.metadata.uid, {})
        if "all_running" in milestones or "first_sync" not in milestones:
            return
        if pod.status.phase == "Running" or not status.container_statuses:
            return
        if all(c.state.HasField("running") for c in status.container_statuses):
            self.syncer.mark(pod.metadata.uid, "all_running")
            metrics.POD_START_DURATION.observe(milestones["all_running"] - milestones["first_sync"])

    def per_pod_state(self) -> dict[str, int]:
        """How many pods each per-pod map holds (a deleted pod must leave none)."""
        return {
            "desired": len(self.desired),
            "posted": len(self.posted),
            "runtime_pods": len(self.runtime_pods),
            "workers": len(self.workers.active()),
            "waiting": len(self.syncer.waiting),
            "milestones": len(self.syncer.milestones),
            "backoff": len(self.backoff),
            "image_backoff": len(self.image_backoff),
            "network_waiting": len(self._network_waiting),
        }

    # ------------------------------------------------------------ PodDirectory

    def pods(self) -> list[core_pb2.Pod]:
        result = []
        for uid, pod in self.desired.items():
            copy = clone(pod)
            if uid in self.posted:
                copy.status.CopyFrom(self.posted[uid])
            result.append(copy)
        return sorted(result, key=lambda p: (p.metadata.namespace, p.metadata.name))

    def find_pod(self, namespace: str, name: str) -> core_pb2.Pod | None:
        for pod in self.desired.values():
            if pod.metadata.namespace == namespace and pod.metadata.name == name:
                return pod
        return None

    def find_container(
        self, namespace: str, name: str, container: str, previous: bool = False
    ) -> ContainerRef | None:
        pod = self.find_pod(namespace, name)
        if pod is None:
            return None
        if not container:
            if len(pod.spec.containers) != 1:
                return None
            container = pod.spec.containers[0].name
        current = self.runtime_pods.get(pod.metadata.uid)
        if current is None:
            return None
        instances = current.instances(container)
        if previous:
            instances = [i for i in instances[1:] if i.exited] if instances else []
        if not instances:
            return None
        chosen = instances[0]
        return ContainerRef(chosen.id, chosen.name, chosen.log_path, chosen.running)
