"""Volumes, env from ConfigMaps and Secrets, and resolv.conf, on a real containerd
(started here) with busybox pods and a real master process (issue 13).

The kubelet runs in this process with its root directory in the test's temporary
folder, a one-second volume refresh and the cluster DNS flags set; what a pod
sees is read with `exec` in its containers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeling.api import kinds
from kubeling.client import Client
from kubeling.client.client import ResourceClient
from kubeling.client.pods import pod_exec
from kubeling.cri.client import RuntimeClient
from kubeling.kubelet.dns import DNSSettings
from kubeling.kubelet.kubelet import Kubelet
from kubeling.node.containerd import mounts_under
from kubeling.v1 import core_pb2
from tests.kubelet.test_kubelet_fake import phase_of
from tests.support.containerd import PrivateContainerd
from tests.support.processes import MasterProcess
from tests.support.real_kubelet import kubelet_config, remove_node_pods, unmount_all
from tests.support.waiting import eventually_passes

pytestmark = pytest.mark.slow

NODE = "node-volumes"


class VolumeNode:
    def __init__(self, api: Client, kubelet: Kubelet, runtime: RuntimeClient, root: Path) -> None:
        self.api, self.kubelet, self.runtime, self.root = api, kubelet, runtime, root
        self.config_maps: ResourceClient[Any] = ResourceClient(kinds.CONFIG_MAP, api.channel, 10)
        self.secrets: ResourceClient[Any] = ResourceClient(kinds.SECRET, api.channel, 10)

    async def run(self, pod: str, container: str, script: str) -> tuple[int, str]:
        reply = await pod_exec(self.api, pod, ["sh", "-c", script], "default", container)
        return reply.exit_code, reply.stdout.strip()


@pytest.fixture
async def node(
    master: MasterProcess, containerd: PrivateContainerd, api: Client, tmp_path: Path
) -> AsyncIterator[VolumeNode]:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch corp.example\n")
    config = kubelet_config(
        master.address,
        NODE,
        containerd,
        dns=DNSSettings(["10.96.0.10"], "cluster.local", resolv),
        root_dir=tmp_path / "kubelet",
        volume_refresh_period=1.0,
    )
    runtime = RuntimeClient(containerd.endpoint)
    kubelet = Kubelet(config, runtime, api)
    await kubelet.start()
    real = VolumeNode(api, kubelet, runtime, config.root_dir)
    try:
        yield real
    finally:
        await remove_node_pods(api, NODE)
        await kubelet.stop()
        await runtime.close()
        for name in ("conf", "creds"):
            for client in (real.config_maps, real.secrets):
                with contextlib.suppress(grpc.aio.AioRpcError):  # absent is fine
                    await client.delete(name, "default")
        unmount_all(tmp_path)  # a failed test must leave no tmpfs behind


def make_pod(name: str, *containers: core_pb2.Container, **spec: object) -> core_pb2.Pod:
    obj = core_pb2.Pod()
    obj.metadata.name = name
    obj.metadata.namespace = "default"
    obj.metadata.labels["app"] = name
    obj.spec.node_name = NODE
    obj.spec.termination_grace_period_seconds = 1
    obj.spec.containers.extend(containers)
    for key, value in spec.items():
        setattr(obj.spec, key, value)
    return obj


def sleeper(name: str, script: str = "exec sleep 3600") -> core_pb2.Container:
    return core_pb2.Container(name=name, image="busybox", command=["sh", "-c", script])


def config_map(name: str, data: dict[str, str]) -> core_pb2.ConfigMap:
    cm = core_pb2.ConfigMap(data=data)
    cm.metadata.name, cm.metadata.namespace = name, "default"
    return cm


async def test_config_map_secret_downward_api_and_a_shared_empty_dir(node: VolumeNode) -> None:
    await node.config_maps.create(config_map("conf", {"greeting": "hello", "MODE": "prod"}))
    secret = core_pb2.Secret(data={"PASSWORD": b"s3cret"})
    secret.metadata.name, secret.metadata.namespace = "creds", "default"
    await node.secrets.create(secret)

    writer = sleeper("writer", "echo shared-data > /scratch/x && exec sleep 3600")
    writer.volume_mounts.add(name="scratch", mount_path="/scratch")
    reader = sleeper("reader")
    reader.volume_mounts.add(name="scratch", mount_path="/scratch")
    reader.volume_mounts.add(name="conf", mount_path="/etc/conf")
    reader.volume_mounts.add(name="info", mount_path="/etc/info")
    reader.volume_mounts.add(name="mem", mount_path="/mem")
    ref = reader.env.add(name="DB_PASSWORD").value_from.secret_key_ref
    ref.name, ref.key = "creds", "PASSWORD"
    reader.env_from.add(prefix="CM_").config_map_ref.name = "conf"
    app = make_pod("app", writer, reader)
    app.spec.volumes.add(name="scratch").empty_dir.SetInParent()
    app.spec.volumes.add(name="conf").config_map.name = "conf"
    info = app.spec.volumes.add(name="info").downward_api
    info.items.add(path="name").field_ref.field_path = "metadata.name"
    info.items.add(path="labels").field_ref.field_path = "metadata.labels"
    mem = app.spec.volumes.add(name="mem").empty_dir
    mem.medium, mem.size_limit = "Memory", "8Mi"
    created = await node.api.pods.create(app)
    await eventually_passes(lambda: phase_of(node.api, "app", "Running"), 90)

    assert await node.run("app", "reader", "cat /etc/conf/greeting") == (0, "hello")
    assert await node.run("app", "reader", "echo $DB_PASSWORD $CM_MODE") == (0, "s3cret prod")
    assert await node.run("app", "reader", "cat /etc/info/name") == (0, "app")
    assert await node.run("app", "reader", "cat /etc/info/labels") == (0, 'app="app"')

    async def shared() -> bool:
        return await node.run("app", "reader", "cat /scratch/x") == (0, "shared-data")

    await eventually_passes(shared, 20)
    code, _ = await node.run("app", "reader", "touch /etc/conf/new")
    assert code != 0  # configMap volumes are read-only
    code, mounts = await node.run("app", "reader", "grep ' /mem ' /proc/mounts")
    assert code == 0 and mounts.startswith("tmpfs /mem tmpfs") and "size=8192k" in mounts

    await node.config_maps.update(config_map("conf", {"greeting": "bye", "MODE": "prod"}))

    async def updated() -> bool:
        return await node.run("app", "reader", "cat /etc/conf/greeting") == (0, "bye")

    await eventually_passes(updated, 30)

    pod_dir = node.root / "pods" / created.metadata.uid
    assert mounts_under(str(pod_dir))  # the Memory emptyDir's tmpfs
    await node.api.pods.delete("app", "default", 1)

    async def cleaned() -> bool:
        return not pod_dir.exists() and not mounts_under(str(pod_dir))

    await eventually_passes(cleaned, 60)


async def test_a_missing_secret_holds_the_container_until_it_exists(node: VolumeNode) -> None:
    main = sleeper("main")
    ref = main.env.add(name="P").value_from.secret_key_ref
    ref.name, ref.key = "creds", "PASSWORD"
    await node.api.pods.create(make_pod("waits", main))

    async def config_error() -> bool:
        got = await node.api.pods.get("waits", "default")
        statuses = got.status.container_statuses
        return bool(statuses) and statuses[0].state.waiting.reason == "CreateContainerConfigError"

    await eventually_passes(config_error, 60)
    got = await node.api.pods.get("waits", "default")
    assert 'secret "creds" not found' in got.status.container_statuses[0].state.waiting.message
    secret = core_pb2.Secret(data={"PASSWORD": b"late"})
    secret.metadata.name, secret.metadata.namespace = "creds", "default"
    await node.secrets.create(secret)
    await eventually_passes(lambda: phase_of(node.api, "waits", "Running"), 60)
    assert await node.run("waits", "main", "echo $P") == (0, "late")


async def test_resolv_conf_by_dns_policy(node: VolumeNode) -> None:
    await node.api.pods.create(make_pod("cluster", sleeper("main")))
    await node.api.pods.create(make_pod("host", sleeper("main"), dns_policy="Default"))
    custom = make_pod("custom", sleeper("main"), dns_policy="None")
    custom.spec.dns_config.nameservers.append("192.0.2.53")
    custom.spec.dns_config.searches.append("only.example")
    custom.spec.dns_config.options.add(name="ndots", value="2")
    await node.api.pods.create(custom)
    for name in ("cluster", "host", "custom"):
        await eventually_passes(lambda n=name: phase_of(node.api, n, "Running"), 90)  # type: ignore[misc]

    async def resolv(pod: str) -> list[str]:
        code, text = await node.run(pod, "main", "cat /etc/resolv.conf")
        assert code == 0
        return [line.strip() for line in text.splitlines() if line.strip()]

    cluster = await resolv("cluster")
    assert "nameserver 10.96.0.10" in cluster
    assert "search default.svc.cluster.local svc.cluster.local cluster.local corp.example" in (
        cluster
    )
    assert "options ndots:5" in cluster
    host = await resolv("host")
    assert "nameserver 192.0.2.1" in host and "nameserver 127.0.0.53" not in host
    assert "search corp.example" in host
    assert await resolv("custom") == [
        "search only.example",
        "nameserver 192.0.2.53",
        "options ndots:2",
    ]


async def test_secret_volume_sub_path_host_path_and_security_context(
    node: VolumeNode, tmp_path: Path
) -> None:
    await node.config_maps.create(config_map("conf", {"app.ini": "x=1"}))
    secret = core_pb2.Secret(data={"token": b"t0ken"})
    secret.metadata.name, secret.metadata.namespace = "creds", "default"
    await node.secrets.create(secret)
    shared = tmp_path / "host-share"
    main = sleeper("main")
    main.volume_mounts.add(name="creds", mount_path="/etc/creds")
    main.volume_mounts.add(name="conf", mount_path="/etc/app.ini", sub_path="app.ini")
    main.volume_mounts.add(name="host", mount_path="/host")
    main.volume_mounts.add(name="scratch", mount_path="/tmp")
    sc = main.security_context
    sc.run_as_user, sc.run_as_group = 1000, 3000
    sc.read_only_root_filesystem = True
    sc.allow_privilege_escalation = False
    sc.capabilities.drop.append("ALL")
    pod = make_pod("secure", main)
    pod.spec.security_context.fs_group = 2000
    pod.spec.volumes.add(name="creds").secret.secret_name = "creds"
    pod.spec.volumes.add(name="conf").config_map.name = "conf"
    host = pod.spec.volumes.add(name="host").host_path
    host.path, host.type = str(shared), "DirectoryOrCreate"
    pod.spec.volumes.add(name="scratch").empty_dir.SetInParent()
    await node.api.pods.create(pod)
    await eventually_passes(lambda: phase_of(node.api, "secure", "Running"), 90)

    assert await node.run("secure", "main", "cat /etc/creds/token") == (0, "t0ken")
    code, mounts = await node.run("secure", "main", "grep ' /etc/creds ' /proc/mounts")
    assert code == 0 and mounts.startswith("tmpfs ")  # secret values stay off the disk
    assert await node.run("secure", "main", "cat /etc/app.ini") == (0, "x=1")
    group = "stat -L -c '%g %a' /etc/creds/token /tmp"
    assert await node.run("secure", "main", group) == (0, "2000 644\n2000 2777")
    assert shared.is_dir()
    assert await node.run("secure", "main", "id -u; id -g; id -G") == (0, "1000\n3000\n3000 2000")
    code, _ = await node.run("secure", "main", "touch /rootfs-file")
    assert code != 0  # readOnlyRootFilesystem
    assert await node.run("secure", "main", "touch /tmp/ok && echo ok") == (0, "ok")
    code, caps = await node.run("secure", "main", "grep CapEff /proc/self/status")
    assert code == 0 and caps.split()[-1] == "0000000000000000"
    code, nnp = await node.run("secure", "main", "grep NoNewPrivs /proc/self/status")
    assert nnp.split()[-1] == "1"
