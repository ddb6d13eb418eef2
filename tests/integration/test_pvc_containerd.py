"""A PersistentVolumeClaim on a real containerd (started here), with busybox pods,
a real master process running the scheduler and the PersistentVolume controller,
and a kubelet in this process with its root directory in the test's folder.

The claim uses the default `local-path` class (WaitForFirstConsumer): the first
pod's scheduling picks the node, the volume is provisioned there, the kubelet
makes its directory and bind-mounts it. A row written through the mount by the
first pod is read back by a second pod after the first one is deleted; the
directory is on the node's disk, under the kubelet's ROOT/storage.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubeling.client import Client
from kubeling.client.pods import pod_exec
from kubeling.cri.client import RuntimeClient
from kubeling.kubelet.kubelet import Kubelet
from kubeling.v1 import core_pb2, storage_pb2
from tests.support.containerd import PrivateContainerd
from tests.support.processes import MasterProcess, running_master
from tests.support.real_kubelet import kubelet_config, remove_node_pods, unmount_all
from tests.support.waiting import eventually_passes

pytestmark = pytest.mark.slow

NODE = "node-pvc"


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MasterProcess]:
    base = tmp_path_factory.mktemp("pvc-master")
    with running_master(
        base, "--bookmark-interval", "1", "--controllers=scheduler,persistentvolume-binder"
    ) as proc:
        yield proc


@pytest.fixture
async def kubelet(
    master: MasterProcess, containerd: PrivateContainerd, api: Client, tmp_path: Path
) -> AsyncIterator[Kubelet]:
    config = kubelet_config(master.address, NODE, containerd, root_dir=tmp_path / "kubelet")
    runtime = RuntimeClient(containerd.endpoint)
    kubelet = Kubelet(config, runtime, api)
    await kubelet.start()
    try:
        yield kubelet
    finally:
        await remove_node_pods(api, NODE)
        await kubelet.stop()
        await runtime.close()
        await api.nodes.delete(NODE)
        unmount_all(tmp_path)  # a failed test must leave no mount behind


def pod_with_claim(name: str, script: str) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name, pod.metadata.namespace = name, "default"
    pod.spec.termination_grace_period_seconds = 1
    container = pod.spec.containers.add(name="db", image="busybox")
    container.command.extend(["sh", "-c", script])
    container.volume_mounts.add(name="data", mount_path="/var/lib/db")
    pod.spec.volumes.add(name="data").persistent_volume_claim.claim_name = "db-data"
    return pod


async def running(api: Client, name: str) -> bool:
    return (await api.pods.get(name, "default")).status.phase == "Running"


async def test_a_row_written_through_the_claim_is_read_by_the_next_pod(
    api: Client, kubelet: Kubelet, tmp_path: Path
) -> None:
    claim = storage_pb2.PersistentVolumeClaim()
    claim.metadata.name, claim.metadata.namespace = "db-data", "default"
    claim.spec.access_modes.append("ReadWriteOnce")
    claim.spec.resources.requests["storage"] = "64Mi"
    await api.persistent_volume_claims.create(claim)
    writer = "echo '1,alice' >> /var/lib/db/rows && exec sleep 3600"
    await api.pods.create(pod_with_claim("db-1", writer))
    await eventually_passes(lambda: running(api, "db-1"), 90)
    bound = await api.persistent_volume_claims.get("db-data", "default")
    assert bound.status.phase == "Bound"
    pv = await api.persistent_volumes.get(bound.spec.volume_name)
    directory = Path(pv.spec.local.path)
    assert directory.parent == (tmp_path / "kubelet" / "storage").absolute()
    reply = await pod_exec(api, "db-1", ["cat", "/var/lib/db/rows"], "default", "db")
    assert (reply.exit_code, reply.stdout) == (0, "1,alice\n")

    await api.pods.delete("db-1", "default", 1)

    async def gone() -> bool:
        names = [p.metadata.name for p in (await api.pods.list("default")).items]
        return "db-1" not in names

    await eventually_passes(gone, 60)
    assert (directory / "rows").read_text() == "1,alice\n"  # on the node's disk
    await api.pods.create(pod_with_claim("db-2", "exec sleep 3600"))
    await eventually_passes(lambda: running(api, "db-2"), 90)
    assert (await api.pods.get("db-2", "default")).spec.node_name == NODE
    reply = await pod_exec(api, "db-2", ["cat", "/var/lib/db/rows"], "default", "db")
    assert (reply.exit_code, reply.stdout) == (0, "1,alice\n")
    # A read-only mount of the same claim refuses writes.
    reader = pod_with_claim("db-ro", "exec sleep 3600")
    reader.spec.volumes[0].persistent_volume_claim.read_only = True
    await api.pods.create(reader)
    await eventually_passes(lambda: running(api, "db-ro"), 90)
    reply = await pod_exec(
        api, "db-ro", ["sh", "-c", "echo x >> /var/lib/db/rows"], "default", "db"
    )
    assert reply.exit_code != 0
    assert (directory / "rows").read_text() == "1,alice\n"
