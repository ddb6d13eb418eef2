"""Chaos in a lab (kubeling.lab): kill -9 kubelets, kube-proxies, containerds and the
master in a seeded random order while a Deployment rolls out behind a Service, a
client per node calls the Service's ClusterIP and a writer records every write the
master acknowledged; then check what must still hold. Used by tests/lab/test_chaos.py
(a few rounds) and bench/soak.py (many).

One round:
1. change the Deployment's pod template (an annotation), so a RollingUpdate starts;
2. kill, in an order drawn from the seed: the master, and the kubelet, the proxy and
   the containerd of nodes drawn from the seed. Each kill is SIGKILL to the PID the
   lab recorded; after a drawn pause (as systemd's RestartSec) the lab starts the
   process again. Its **window** runs from just before the SIGKILL until it is back
   and healthy (what "healthy" means per component: `_wait_healthy`). Kills are one
   at a time, or with `overlap` at drawn offsets within 8 s (several down at once);
3. wait until the rollout completes.

Traffic safety: the clients run inside the lab's node namespaces (no route off the
machine) and call a ClusterIP there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import json_format

from kubeling.client import Client
from kubeling.cri.api import pb
from kubeling.cri.client import RuntimeClient
from kubeling.cri.errors import CRIError
from kubeling.kubelet import labels
from kubeling.lab.lab import Lab, LabOptions
from kubeling.v1 import apps_pb2, coordination_pb2, core_pb2
from tests.support import waiting
from tests.support.processes import stop_process

NS = "default"
APP = "chaos"
REPLICAS = 6
# After SIGTERM a pod keeps serving this long before it exits (as a preStop sleep
# does in Kubernetes): the time for the endpoints controller to drop it and every
# kube-proxy to sync, even when the master is restarting in between (its restart,
# then 15 s for the dead leader's Lease to expire, then the controllers' resync).
DRAIN_SECONDS = 30
CLIENT = str(Path(__file__).with_name("svcclient.py"))
LEADER_LEASE = ("kube-system", "kubeling-controller-manager")
KILLED = ("master", "kubelet", "proxy", "containerd")
ROUND = "chaos/round"  # the pod template annotation each round changes

DEPLOYMENT = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {APP}, namespace: {NS}}}
spec:
  replicas: {REPLICAS}
  selector: {{matchLabels: {{app: {APP}}}}}
  template:
    metadata: {{labels: {{app: {APP}}}, annotations: {{chaos/round: "0"}}}}
    spec:
      terminationGracePeriodSeconds: {DRAIN_SECONDS + 10}
      containers:
        - name: web
          image: busybox
          command: ["sh", "-c"]
          args:
            - |
              mkdir -p /www && hostname > /www/index.html
              httpd -f -p 8080 -h /www & pid=$!
              trap 'sleep {DRAIN_SECONDS}; kill $pid; exit 0' TERM
              wait $pid
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 1}}
          resources: {{requests: {{cpu: 10m, memory: 8Mi}}}}
"""

SERVICE = f"""
apiVersion: v1
kind: Service
metadata: {{name: {APP}, namespace: {NS}}}
spec:
  selector: {{app: {APP}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
"""


def lab_options(prefix: str, nodes: int = 3) -> LabOptions:
    """Heartbeats and syncs at test speed, so windows measure recovery, not periods."""
    return LabOptions(
        nodes=nodes,
        prefix=prefix,
        kubelet_args=["--lease-renew-interval", "1", "--status-interval", "2"],
        proxy_args=["--min-sync-interval", "0.2"],
    )


def parse(text: str, message: Any) -> Any:
    return json_format.ParseDict(yaml.safe_load(text), message)


# -- what happened --------------------------------------------------------------------


@dataclass
class Kill:
    round: int
    target: str  # "master" or a node's name
    component: str  # "master", "kubelet", "proxy" or "containerd"
    delay: float = 0.0  # seconds before the SIGKILL (drawn from the seed)
    down: float = 0.0  # seconds between the SIGKILL and the restart (drawn too)
    pid: int = 0
    start: float = 0.0  # time.monotonic(), just before the SIGKILL
    end: float = float("inf")  # back and healthy (inf: never)

    def overlaps(self, t0: float, t1: float) -> bool:
        return t0 <= self.end and t1 >= self.start

    @property
    def name(self) -> str:
        return "the master" if self.target == "master" else f"{self.component} of {self.target}"

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Request:
    node: str  # where the client ran (its kube-proxy chose the pod)
    t0: float
    t1: float
    pod: str = ""  # who answered
    error: str = ""
    dst: str = ""  # a failure's DNAT target (a pod IP), from conntrack

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass
class Writes:
    """What the writer asked the master for and what it acknowledged."""

    acked: dict[str, str] = field(default_factory=dict)  # Lease name -> holder
    unknown: dict[str, str] = field(default_factory=dict)  # failed: applied or not
    counter_acked: int = 0  # the last value of the counter Lease the master acked
    counter_tried: int = 0  # the last value sent


@dataclass
class Report:
    seed: int
    rounds: int = 0
    kills: list[Kill] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    writes: Writes = field(default_factory=Writes)
    excused: list[tuple[Request, str]] = field(default_factory=list)
    unexcused: list[Request] = field(default_factory=list)
    rollout_seconds: list[float] = field(default_factory=list)
    # Every pod of the Deployment ever created: uid -> (name, owning ReplicaSet uid).
    pods_created: dict[str, tuple[str, str]] = field(default_factory=dict)
    watch_gaps: int = 0  # times the pod watch could not resume where it stopped

    def longest(self, component: str) -> float:
        return max(k.seconds for k in self.kills if k.component == component)

    def overlapping(self, request: Request) -> list[Kill]:
        return [k for k in self.kills if k.overlaps(request.t0, request.t1)]

    def in_any_window(self, request: Request) -> bool:
        return any(k.overlaps(request.t0, request.t1) for k in self.kills)

    def table(self) -> str:
        kills = Counter(k.component for k in self.kills)
        outside = [r for r in self.requests if not self.in_any_window(r)]
        inside = [r for r in self.requests if self.in_any_window(r)]
        rows: list[tuple[str, object]] = [
            ("seed", self.seed),
            ("rounds", self.rounds),
            *((f"kills {c}", kills[c]) for c in KILLED),
            ("kills total", len(self.kills)),
            *((f"window {c} max s", f"{self.longest(c):.1f}") for c in KILLED if kills[c]),
            ("rollout s (max)", f"{max(self.rollout_seconds, default=0):.1f}"),
            ("requests", len(self.requests)),
            ("requests ok", sum(r.ok for r in self.requests)),
            ("requests inside a kill window", len(inside)),
            ("failures inside a kill window", sum(not r.ok for r in inside)),
            ("requests outside every window", len(outside)),
            ("failures outside every window", sum(not r.ok for r in outside)),
            ("failures excused", len(self.excused)),
            ("failures not excused", len(self.unexcused)),
            ("pods created", len(self.pods_created)),
            ("writes acked", len(self.writes.acked) + self.writes.counter_acked),
            ("writes unknown (failed)", len(self.writes.unknown)),
        ]
        reasons = Counter(why.split(" (")[0] for _, why in self.excused)
        rows += [(f"  excused: {why}", count) for why, count in sorted(reasons.items())]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def excuse(request: Request, kills: list[Kill], node_of_ip: Callable[[str], str]) -> str:
    """Why a failed request does not count against the Service ("" = it counts).

    Excused only when it overlapped (t0..t1) the window of
    - the kube-proxy of the node it was sent from: that node's rules stayed as they
      were at the kill, while pods came and went; or
    - the containerd of the node of the pod it was sent to (`dst`, from conntrack):
      nothing on that node can start, stop or report pods.
    Nothing else: not the master's windows (pods drain DRAIN_SECONDS after SIGTERM,
    longer than a master's restart), not a kubelet's (its pods keep running), not a
    failure with no pod (a Service must never lack endpoints during a rollout).
    """
    for kill in kills:
        if not kill.overlaps(request.t0, request.t1):
            continue
        if kill.component == "proxy" and kill.target == request.node:
            return f"proxy of {request.node} down"
        if (
            kill.component == "containerd"
            and request.dst
            and node_of_ip(request.dst) == kill.target
        ):
            return f"containerd of {kill.target} (pod {request.dst}) down"
    return ""


# -- the run ------------------------------------------------------------------------


class Chaos:
    def __init__(
        self,
        lab: Lab,
        api: Client,
        seed: int,
        work_dir: Path,
        progress: Callable[[str], None] = lambda _: None,
        overlap: bool = False,
    ) -> None:
        """`overlap`: a round's kills start at drawn times within a few seconds, not
        one after the other, so several components are down at once."""
        self.lab = lab
        self.overlap = overlap
        self.lab_calls = asyncio.Lock()  # the lab's record is written by one at a time
        self.api = api
        self.rng = random.Random(seed)
        self.report = Report(seed)
        self.work_dir = work_dir
        self.progress = progress
        assert lab.state is not None
        self.nodes = [n.name for n in lab.state.nodes]
        self.pod_watch: asyncio.Task[None] | None = None

    # -- the workload ---------------------------------------------------------------

    async def deploy(self) -> str:
        """The Deployment and its Service, all replicas ready; returns the ClusterIP."""
        since = (await self.api.pods.list(NS)).resource_version
        self.pod_watch = asyncio.create_task(self.watch_pods(since))
        await self.api.deployments.create(parse(DEPLOYMENT, apps_pb2.Deployment()))
        service = await self.api.services.create(parse(SERVICE, core_pb2.Service()))
        await self.wait_rollout(within=180)
        return str(service.spec.cluster_ip)

    async def rollout_done(self) -> bool:
        deployment = await self.api.deployments.get(APP, NS)
        status = deployment.status
        return (
            status.observed_generation >= deployment.metadata.generation
            and status.updated_replicas == REPLICAS
            and status.replicas == REPLICAS  # no old pods left
            and status.available_replicas == REPLICAS
        )

    async def wait_rollout(self, within: float) -> None:
        await waiting.eventually_passes(
            self.rollout_done, within=within, interval=0.5, describe=self.describe
        )

    async def roll(self, round_: int) -> None:
        """A new pod template: every pod is replaced by a RollingUpdate."""

        async def update() -> bool:
            deployment = await self.api.deployments.get(APP, NS)
            deployment.spec.template.metadata.annotations[ROUND] = str(round_)
            await self.api.deployments.update(deployment)
            return True

        await waiting.eventually_passes(update, within=60, interval=0.5)

    # -- kills ----------------------------------------------------------------------

    def plan(self, round_: int) -> list[Kill]:
        """The master, and the kubelet, proxy and containerd of drawn nodes, in a
        drawn order with drawn pauses: the same seed gives the same plan."""
        kills = [Kill(round_, "master", "master")] + [
            Kill(round_, self.rng.choice(self.nodes), component)
            for component in ("kubelet", "proxy", "containerd")
        ]
        self.rng.shuffle(kills)
        for kill in kills:
            # Overlapping: offsets from the round's start; else pauses between kills.
            kill.delay = self.rng.uniform(0.0, 8.0) if self.overlap else self.rng.uniform(0.5, 3.0)
            kill.down = self.rng.uniform(0.5, 2.0)  # until "systemd" restarts it
        return kills

    async def crash(self, kill: Kill) -> None:
        await asyncio.sleep(kill.delay)
        component = "" if kill.target == "master" else kill.component
        async with self.lab_calls:
            kill.start = time.monotonic()
            kill.pid = await asyncio.to_thread(self.lab.kill, kill.target, component)
        self.report.kills.append(kill)
        self.progress(f"round {kill.round}: killed {kill.name}")
        await asyncio.sleep(kill.down)
        restarted = time.time()
        async with self.lab_calls:
            await asyncio.to_thread(self.lab.start_component, kill.target, component)
        await self._wait_healthy(kill, restarted)
        kill.end = time.monotonic()
        self.progress(f"round {kill.round}: {kill.name} back in {kill.seconds:.1f}s")

    async def _wait_healthy(self, kill: Kill, restarted: float) -> None:
        """Back and healthy:
        - master: serving, and leading again (the controller Lease names its new PID);
        - kubelet: /healthz answers 200 and the node's Lease was renewed since the restart;
        - proxy: /healthz answers 200 with a sync made since the restart;
        - containerd: CRI says runtime and network ready, the kubelet's /healthz
          (which includes "the runtime answers") is 200, and the kubelet relisted the
          runtime twice since (kubelet_pleg_relist_duration_seconds_count).
        """
        state = self.lab.state
        assert state is not None
        if kill.target == "master":
            assert state.master is not None
            pid = state.master.pid

            async def leading() -> bool:
                lease = await self.api.leases.get(LEADER_LEASE[1], LEADER_LEASE[0])
                return lease.spec.holder_identity.endswith(f"_{pid}")

            await waiting.eventually_passes(leading, within=90, interval=0.2)
            return
        node = kill.target
        if kill.component == "kubelet":

            async def renewed() -> bool:
                lease = await self.api.leases.get(node, "kube-node-lease")
                return lease.spec.renew_time.ToNanoseconds() / 1e9 > restarted

            await waiting.eventually(lambda: self._healthz(node, 10248), within=60, interval=0.2)
            await waiting.eventually_passes(renewed, within=60, interval=0.2)
        elif kill.component == "proxy":

            async def synced() -> bool:
                body = await self._healthz(node, 10256)
                if not body:
                    return False
                stamp = json.loads(body)["lastUpdated"]
                return bool(stamp) and _wall(stamp) >= restarted

            await waiting.eventually(synced, within=60, interval=0.2)
        else:
            async with RuntimeClient(self._cri(node), timeout=5) as cri:

                async def ready() -> bool:
                    conditions = (await cri.status()).status.conditions
                    return all(c.status for c in conditions) and len(conditions) >= 2

                # CRI answers "server is not initialized yet" for a moment after start.
                retry = (*waiting.TRANSIENT_ERRORS, CRIError)
                await waiting.eventually(ready, within=60, interval=0.2, retry_on=retry)
            await waiting.eventually(lambda: self._healthz(node, 10248), within=60, interval=0.2)
            # The kubelet relists the runtime again (its /healthz would not say if
            # its relist loop had died with the old connection).
            before = await self._relists(node)

            async def relisting() -> bool:
                return await self._relists(node) >= before + 2

            async def stuck() -> str:
                count = await self._relists(node)
                return f"\nkubelet on {node}: kubelet_pleg_relist_duration_seconds_count {count}"

            await waiting.eventually(relisting, within=30, interval=0.5, describe=stuck)

    async def _relists(self, node: str) -> float:
        """How many relists the node's kubelet has made (-1: no answer)."""
        metric = "kubelet_pleg_relist_duration_seconds_count "
        for line in (await self._healthz(node, 10248, "/metrics")).splitlines():
            if line.startswith(metric):
                return float(line.removeprefix(metric))
        return -1.0

    async def _healthz(self, node: str, port: int, path: str = "/healthz") -> str:
        """The body of a 200 from http://127.0.0.1:PORT/healthz (or `path`) inside the
        node ("" if not)."""
        argv = self.lab.exec_command(
            node, ["curl", "-sf", "-m", "2", f"http://127.0.0.1:{port}{path}"]
        )
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await proc.communicate()
        return out.decode() if proc.returncode == 0 else ""

    def _cri(self, node: str) -> str:
        return f"unix://{self.lab.node_dir(node) / 'containerd.sock'}"

    # -- the clients and the writer --------------------------------------------------

    @contextlib.contextmanager
    def clients(self, cluster_ip: str, interval: float = 0.1) -> Iterator[dict[str, Path]]:
        """One Service client per node, stopped (by PID) on the way out."""
        procs: list[subprocess.Popen[bytes]] = []
        outputs: dict[str, Path] = {}
        try:
            for node in self.nodes:
                path = self.work_dir / f"client-{node}.jsonl"
                outputs[node] = path
                with path.open("wb") as out:
                    procs.append(
                        subprocess.Popen(
                            self.lab.exec_command(
                                node, [sys.executable, CLIENT, cluster_ip, "80", str(interval)]
                            ),
                            stdout=out,
                            stderr=subprocess.DEVNULL,
                        )
                    )
            yield outputs
        finally:
            for proc in procs:
                stop_process(proc)

    async def writer(self, stop: asyncio.Event) -> None:
        """Creates a Lease per write and bumps a counter Lease, recording what the
        master acknowledged; a failed call may or may not have been applied."""
        writes = self.report.writes
        counter: coordination_pb2.Lease | None = None
        index = 0
        async with self.lab.client(timeout=5) as api:
            while not stop.is_set():
                index += 1
                lease = coordination_pb2.Lease()
                lease.metadata.name = f"chaos-write-{index}"
                lease.metadata.namespace = NS
                lease.spec.holder_identity = f"value-{index}"
                try:
                    await api.leases.create(lease)
                    writes.acked[lease.metadata.name] = lease.spec.holder_identity
                except grpc.aio.AioRpcError:
                    writes.unknown[lease.metadata.name] = lease.spec.holder_identity
                try:
                    if counter is None:
                        counter = await _get_or_create_counter(api)
                    counter.spec.holder_identity = str(index)
                    writes.counter_tried = index
                    counter = await api.leases.update(counter)
                    writes.counter_acked = index
                except grpc.aio.AioRpcError:
                    counter = None  # read it again: the write may have been applied
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.2)

    async def watch_pods(self, version: str) -> None:
        """Record every pod of the Deployment ever created, across master restarts
        (the watch resumes from the last revision it saw)."""
        created = self.report.pods_created
        while True:
            try:
                async for event in self.api.pods.watch(
                    NS, label_selector=f"app={APP}", resource_version=version
                ):
                    version = event.resource_version
                    pod = event.object
                    if event.type != "BOOKMARK" and pod.metadata.uid not in created:
                        owner = [o.uid for o in pod.metadata.owner_references]
                        created[pod.metadata.uid] = (pod.metadata.name, ",".join(owner))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                    self.report.watch_gaps += 1  # history lost: start over from now
                    version = (await self.api.pods.list(NS)).resource_version
                else:
                    await asyncio.sleep(0.2)  # the master is down

    # -- the whole run --------------------------------------------------------------

    async def run(self, rounds: int) -> Report:
        cluster_ip = await self.deploy()
        self.progress(f"deployment ready behind {cluster_ip}")
        with self.clients(cluster_ip) as outputs:
            await self._wait_answers(outputs)
            stop = asyncio.Event()
            writer = asyncio.create_task(self.writer(stop))
            try:
                for round_ in range(1, rounds + 1):
                    started = time.monotonic()
                    await self.roll(round_)
                    plan = self.plan(round_)
                    if self.overlap:
                        await asyncio.gather(*(self.crash(kill) for kill in plan))
                    else:
                        for kill in plan:
                            await self.crash(kill)
                    await self.wait_rollout(within=180)
                    self.report.rollout_seconds.append(time.monotonic() - started)
                    self.report.rounds = round_
                    self.progress(f"round {round_}: rollout complete")
            finally:
                stop.set()
                await writer
        self.report.requests = [r for node, path in outputs.items() for r in _read(node, path)]
        cidrs = {n.name: ipaddress.ip_network(n.pod_cidr) for n in self.lab.state.nodes}  # type: ignore[union-attr]

        def node_of_ip(ip: str) -> str:
            return next((n for n, net in cidrs.items() if ipaddress.ip_address(ip) in net), "")

        for request in self.report.requests:
            if request.ok:
                continue
            why = excuse(request, self.report.kills, node_of_ip)
            if why:
                self.report.excused.append((request, why))
            else:
                self.report.unexcused.append(request)
        return self.report

    async def _wait_answers(self, outputs: dict[str, Path]) -> None:
        """Until every client got an answer: every node's proxy has the Service."""

        def answered() -> bool:
            return all(any(r.ok for r in _read(node, path)) for node, path in outputs.items())

        await waiting.eventually(answered, within=60, interval=0.2)

    # -- the invariants -------------------------------------------------------------

    async def check_pods(self) -> None:
        """Exactly REPLICAS pods of the new template, Running and Ready, one per name,
        all owned by the Deployment's current ReplicaSet; every other ReplicaSet at 0;
        no pod in the namespace without a living owner."""

        async def settled() -> bool:
            deployment = await self.api.deployments.get(APP, NS)
            sets = [
                rs
                for rs in (await self.api.replica_sets.list(NS)).items
                if any(o.uid == deployment.metadata.uid for o in rs.metadata.owner_references)
            ]
            template = deployment.spec.template.metadata.annotations[ROUND]
            current = [
                rs for rs in sets if rs.spec.template.metadata.annotations[ROUND] == template
            ]
            assert len(current) == 1, f"ReplicaSets of the current template: {len(current)}"
            new = current[0]
            for rs in sets:
                if rs is not new:
                    assert rs.spec.replicas == 0 and rs.status.replicas == 0, rs.metadata.name
            pods = (await self.api.pods.list(NS)).items
            names = [p.metadata.name for p in pods]
            assert len(names) == len(set(names)), Counter(names)
            owners = {rs.metadata.uid for rs in sets}
            orphans = [
                p.metadata.name
                for p in pods
                if not any(o.uid in owners for o in p.metadata.owner_references)
            ]
            assert not orphans, f"pods without a living owner: {orphans}"
            assert len(pods) == REPLICAS, f"{len(pods)} pods: {sorted(names)}"
            for pod in pods:
                assert [o.uid for o in pod.metadata.owner_references] == [new.metadata.uid]
                assert not pod.metadata.HasField("deletion_timestamp"), pod.metadata.name
                assert pod.status.phase == "Running" and _ready(pod), pod.metadata.name
            return True

        # Old pods drain for DRAIN_SECONDS after the rollout is complete.
        await waiting.eventually_passes(
            settled, within=DRAIN_SECONDS + 60, interval=0.5, describe=self.describe
        )

    async def close(self) -> None:
        """Stop the pod watch (after check_pod_history, or when the run failed)."""
        if self.pod_watch is not None:
            self.pod_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.pod_watch

    async def check_pod_history(self) -> None:
        """Every ReplicaSet of the run created exactly REPLICAS pods in its life: a
        master restart made no controller create a pod twice (or lose one and make
        another)."""
        pods = (await self.api.pods.list(NS, label_selector=f"app={APP}")).items

        def caught_up() -> bool:  # the watch has seen the last pods made
            return all(p.metadata.uid in self.report.pods_created for p in pods)

        await waiting.eventually(caught_up, within=30, interval=0.2)
        await self.close()
        assert self.report.watch_gaps == 0, "the pod watch lost history: pods may be missed"
        per_owner = Counter(owner for _, owner in self.report.pods_created.values())
        # One ReplicaSet per template (the first, and one per round); the Deployment
        # keeps only the last 10 (revisionHistoryLimit), so count the pods' owners.
        assert len(per_owner) == self.report.rounds + 1, f"{len(per_owner)} owners: {per_owner}"
        assert set(per_owner.values()) == {REPLICAS}, per_owner

    async def check_sandboxes(self) -> None:
        """On every node: each pod bound there has exactly one sandbox, READY; no
        other sandbox (of a deleted pod, or a duplicate) and no container outside
        those sandboxes."""
        for node in self.nodes:
            async with RuntimeClient(self._cri(node), timeout=10) as cri:

                async def matches(node: str = node, cri: RuntimeClient = cri) -> bool:
                    bound = (
                        await self.api.pods.list("", field_selector=f"spec.nodeName={node}")
                    ).items
                    want = {p.metadata.uid: p.metadata.name for p in bound}
                    sandboxes = await cri.list_pod_sandbox()
                    found = Counter(s.metadata.uid for s in sandboxes)
                    extra = [
                        (s.metadata.name, pb.PodSandboxState.Name(s.state))
                        for s in sandboxes
                        if s.metadata.uid not in want
                    ]
                    assert not extra, f"{node}: sandboxes of no pod bound there: {extra}"
                    missing = [want[uid] for uid in want if found[uid] == 0]
                    assert not missing, f"{node}: pods without a sandbox: {missing}"
                    twice = [want[uid] for uid in want if found[uid] > 1]
                    assert not twice, f"{node}: pods with several sandboxes: {twice}"
                    not_ready = [s.metadata.name for s in sandboxes if s.state != pb.SANDBOX_READY]
                    assert not not_ready, f"{node}: sandboxes not ready: {not_ready}"
                    ids = {s.id for s in sandboxes}
                    strays = [
                        c.metadata.name
                        for c in await cri.list_containers()
                        if c.pod_sandbox_id not in ids
                    ]
                    assert not strays, f"{node}: containers outside every sandbox: {strays}"
                    assert all(s.labels.get(labels.POD_UID) == s.metadata.uid for s in sandboxes)
                    return True

                await waiting.eventually(
                    matches, within=60, interval=0.5, retry_on=(*waiting.TRANSIENT_ERRORS, CRIError)
                )

    async def check_writes(self) -> None:
        """Every write the master acknowledged is there, with its value, after every
        kill -9 of the master; a write that failed may be there or not."""
        writes = self.report.writes
        present = {
            lease.metadata.name: lease.spec.holder_identity
            for lease in (await self.api.leases.list(NS)).items
            if lease.metadata.name.startswith("chaos-write-")
        }
        lost = {name: value for name, value in writes.acked.items() if present.get(name) != value}
        assert not lost, f"acknowledged writes lost or changed: {sorted(lost)[:20]}"
        invented = set(present) - set(writes.acked) - set(writes.unknown)
        assert not invented, f"writes nobody made: {sorted(invented)[:20]}"
        counter = await self.api.leases.get("chaos-counter", NS)
        value = int(counter.spec.holder_identity or 0)
        # The last acked value, or a later one whose acknowledgement was lost.
        assert writes.counter_acked <= value <= writes.counter_tried, (
            value, writes.counter_acked, writes.counter_tried,
        )  # fmt: skip

    async def describe(self) -> str:
        lines = ["", "pods:"]
        with contextlib.suppress(grpc.aio.AioRpcError):
            for pod in (await self.api.pods.list(NS)).items:
                lines.append(
                    f"  {pod.metadata.name} uid={pod.metadata.uid} node={pod.spec.node_name} "
                    f"phase={pod.status.phase} ready={_ready(pod)} "
                    f"deleting={pod.metadata.HasField('deletion_timestamp')}"
                )
                if not _ready(pod):
                    for status in pod.status.container_statuses:
                        state = json_format.MessageToDict(status.state)
                        lines.append(f"    {status.name}: {state}")
                    for event in (await self.api.events.list(NS)).items:
                        if event.involved_object.uid == pod.metadata.uid:
                            lines.append(f"    event {event.reason}: {event.message}")
            deployment = await self.api.deployments.get(APP, NS)
            lines.append(f"deployment: {json_format.MessageToDict(deployment.status)}")
        return "\n".join(lines)


async def _get_or_create_counter(api: Client) -> coordination_pb2.Lease:
    try:
        return await api.leases.get("chaos-counter", NS)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
    lease = coordination_pb2.Lease()
    lease.metadata.name = "chaos-counter"
    lease.metadata.namespace = NS
    lease.spec.holder_identity = "0"
    return await api.leases.create(lease)


def _ready(pod: core_pb2.Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


def _wall(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()


def _read(node: str, path: Path) -> list[Request]:
    requests = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line being written
            requests.append(Request(node=node, **json.loads(line)))
    return requests
