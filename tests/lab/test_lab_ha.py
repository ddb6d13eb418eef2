"""Several masters in the lab (`kubeling lab up --masters 3 --store etcd`): three real
masters on a three-member etcd cluster over mutual TLS, each master with its member
in its own namespace, and one worker (containerd, kubelet, kube-proxy) given every
master's address.

One pass, as an operator would try it: a Deployment becomes available; the master
holding the controller Lease and another master's etcd member are stopped; the
Deployment is scaled and completes under the new leader with exactly as many pods as
asked (none lost, none twice); both come back, the restarted master serving what was
written meanwhile; `down` leaves no namespace and no process of the lab. Traffic stays
in the lab's namespaces (no route off the machine); the lab has its own folder and
namespace prefix and is taken down even on failure.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeling.client import Client
from kubeling.lab.lab import Lab, LabOptions, Proc, running_lab
from kubeling.v1 import apps_pb2
from tests.support import waiting
from tests.support.containerd import skip_reason
from tests.support.etcd import require_etcd

pytestmark = [
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
    pytest.mark.slow,
]

NS = "default"
LEASE = "kubeling-controller-manager"
eventually = functools.partial(waiting.eventually_passes, within=90.0, interval=0.3)


def deployment(replicas: int) -> apps_pb2.Deployment:
    obj = apps_pb2.Deployment()
    obj.metadata.name, obj.metadata.namespace = "web", NS
    obj.spec.replicas = replicas
    obj.spec.selector.match_labels["app"] = "web"
    template = obj.spec.template
    template.metadata.labels["app"] = "web"
    template.spec.termination_grace_period_seconds = 1
    container = template.spec.containers.add(name="web", image="busybox")
    container.command.extend(["sleep", "100000"])
    container.resources.requests.update({"cpu": "10m", "memory": "8Mi"})
    return obj


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_etcd()
    if shutil.which("etcdctl") is None:
        pytest.skip("etcdctl is not installed (apt-get install etcd-client)")
    # A short folder: unix socket paths are limited to 108 bytes.
    base = Path(f"/tmp/klha-{secrets.token_hex(3)}")
    options = LabOptions(nodes=1, masters=3, store="etcd", prefix=f"klh{secrets.token_hex(2)}-")
    with running_lab(base, options) as running:
        yield running


async def available(api: Client, replicas: int) -> bool:
    """The Deployment has `replicas` available and exactly that many live pods,
    all Running on the worker, of one ReplicaSet."""
    status = (await api.deployments.get("web", NS)).status
    assert status.available_replicas == replicas == status.updated_replicas, status
    pods = [
        p
        for p in (await api.pods.list(NS, label_selector="app=web")).items
        if not p.metadata.HasField("deletion_timestamp")
    ]
    assert len(pods) == replicas, [p.metadata.name for p in pods]
    assert all(p.status.phase == "Running" and p.spec.node_name == "worker-1" for p in pods)
    assert len({p.metadata.owner_references[0].uid for p in pods}) == 1
    return True  # (eventually waits for a truthy result)


async def snapshot(lab: Lab) -> str:
    """Pods, the ReplicaSets as each master sees them, the Lease, recent events and
    the masters' logs, for a failure message."""
    lines = [""]
    assert lab.state is not None
    for master in lab.state.masters:
        lines.append(f"{master.name}:")
        try:
            own = f"unix:{lab.master_socket_of(master.name)}"
            async with Client(own, timeout=5, credentials=lab.credentials()) as api:
                for pod in (await api.pods.list(NS)).items:
                    ready = [c.status for c in pod.status.conditions if c.type == "Ready"]
                    lines.append(
                        f"  pod {pod.metadata.name} rv={pod.metadata.resource_version} "
                        f"phase={pod.status.phase} ready={ready}"
                    )
                for rs in (await api.replica_sets.list(NS)).items:
                    lines.append(f"  rs {rs.metadata.name} {rs.status}".replace("\n", " "))
                lease = await api.leases.get(LEASE, "kube-system")
                lines.append(f"  lease {lease.spec.holder_identity}")
                if master is lab.state.masters[0]:
                    for event in (await api.events.list(NS)).items[-12:]:
                        lines.append(f"  {event.involved_object.name}: {event.message[:100]}")
        except Exception as exc:  # the failure message matters more than this part
            lines.append(f"  (no answer: {exc!r})")
        log = lab.logs / f"{master.name}.log"
        if log.exists():
            text = [line for line in log.read_text(errors="replace").splitlines() if "[" in line]
            lines += [f"  | {line[:300]}" for line in text[-12:]]
    return "\n".join(lines)


async def leader(lab: Lab, api: Client) -> str:
    """The name of the master holding the controller Lease (its identity ends in
    the master's PID)."""
    holder = (await api.leases.get(LEASE, "kube-system")).spec.holder_identity
    assert lab.state is not None
    for master in lab.state.masters:
        proc = master.process
        if proc is not None and proc.alive() and holder.endswith(f"_{proc.pid}"):
            return master.name
    raise AssertionError(f"the Lease holder {holder!r} is no running master")


async def test_three_masters_on_etcd_survive_losing_the_leader_and_a_member(lab: Lab) -> None:
    timings: dict[str, float] = {}
    mark = time.monotonic()

    def lap(what: str) -> None:
        nonlocal mark
        timings[what] = round(time.monotonic() - mark, 1)
        mark = time.monotonic()

    assert lab.state is not None
    assert [m.name for m in lab.state.masters] == ["master-1", "master-2", "master-3"]
    assert not [row for row in lab.status() if "DOWN" in row[4]], lab.status()
    async with lab.client(timeout=10) as api:
        await api.deployments.create(deployment(2))
        await eventually(lambda: available(api, 2), describe=lambda: snapshot(lab))
        lap("deployment of 2 available")

        stopped = await eventually(lambda: leader(lab, api))
        # A member beside another master: two masters and two members remain.
        member = lab.master_of(f"master-{int(stopped[-1]) % 3 + 1}").etcd_name
        await asyncio.to_thread(lab.stop, stopped)
        await asyncio.to_thread(lab.stop, member)
        lap(f"{stopped} and {member} stopped")

        async def new_leader() -> str:
            name = await leader(lab, api)
            assert name != stopped
            return name

        successor = await eventually(new_leader)

        async def scale() -> bool:
            current = await api.deployments.get("web", NS)
            current.spec.replicas = 4
            await api.deployments.update(current)
            return True

        await eventually(scale)
        await eventually(lambda: available(api, 4), describe=lambda: snapshot(lab))
        lap(f"scaled to 4 under {successor}")

    await asyncio.to_thread(lab.start, stopped)  # until it serves
    await asyncio.to_thread(lab.start, member)  # until etcd answers a linearizable read
    assert not [row for row in lab.status() if "DOWN" in row[4]], lab.status()
    # The restarted master, through its own socket, serves what was written without it.
    own = f"unix:{lab.master_socket_of(stopped)}"
    async with Client(own, timeout=10, credentials=lab.credentials()) as api:
        assert (await api.deployments.get("web", NS)).spec.replicas == 4
        await eventually(lambda: available(api, 4))
    lap("both back")

    await asyncio.to_thread(down_leaves_nothing, lab)
    lap("down")
    print(f"\ntimings (s): {timings}")


def down_leaves_nothing(lab: Lab) -> None:
    assert lab.state is not None
    prefix = lab.state.prefix
    procs: list[Proc] = [p for m in lab.state.masters for p in (m.process, m.etcd) if p]
    procs += [p for n in lab.state.nodes for p in (n.containerd, n.kubelet, n.proxy) if p]
    assert len(procs) == 9 and all(p.alive() for p in procs)
    lab.down(progress=lambda _: None)
    assert not list(Path("/var/run/netns").glob(f"{prefix}*"))
    assert not [p.pid for p in procs if p.alive()]
    assert not lab.dir.exists()
