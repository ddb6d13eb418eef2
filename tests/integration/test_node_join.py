"""A node joins a real in-process master with TLS (kubeadm-style) and works:
the kubelet and the proxy get their own certificates through the join port, the
kubelet registers with its node certificate (no token on Nodes/Create), the
master reaches the kubelet API with its own identity (Exec) while an admin going
there directly is refused, a wrong CA pin stops the join before the token is
sent, and a renewed certificate is used without a restart. Loopback only."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from kubeling.client import Client, bootstrap
from kubeling.client.pods import pod_exec
from kubeling.common import pki, rpc
from kubeling.common.tls import CredentialDir, Credentials
from kubeling.cri.fake import FakeRuntime
from kubeling.kubelet.kubelet import Kubelet
from kubeling.master.server import Master
from kubeling.v1 import core_pb2, kubelet_pb2
from tests.support.hollow import BUSYBOX, kubelet_config
from tests.support.inprocess import tls_master

NODE = "joined-1"


@dataclass
class Cluster:
    master: Master
    address: str
    admin: Client
    token: str

    @property
    def join_address(self) -> str:
        return f"127.0.0.1:{self.master.join_port}"

    @property
    def pin(self) -> str:
        assert self.master.ca is not None
        return self.master.ca.pin


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with tls_master(tmp_path / "master") as (master, admin):
        token, _ = await master.tokens.issue(ttl=600, description="node join test")
        yield Cluster(master, admin.target, admin, token)


async def _join(cluster: Cluster, cred_dir: CredentialDir, role: str) -> Credentials:
    return await bootstrap.load_or_join(
        cred_dir, role=role, node_name=NODE, join_address=cluster.join_address,
        pin=cluster.pin, token=cluster.token, addresses=["127.0.0.1"],
    )  # fmt: skip


async def test_a_wrong_pin_stops_before_the_token_is_sent(cluster: Cluster, tmp_path: Path) -> None:
    stranger = pki.ca_pin(pki.make_ca("stranger").cert_pem)
    with pytest.raises(bootstrap.BootstrapError, match="refusing to send the token"):
        await bootstrap.load_or_join(
            CredentialDir(tmp_path / "pki", "kubelet"), role="node", node_name=NODE,
            join_address=cluster.join_address, pin=stranger, token=cluster.token,
        )  # fmt: skip
    assert not (tmp_path / "pki").exists()
    # The real pin works with the same token: it was never spent or seen.
    assert await _join(cluster, CredentialDir(tmp_path / "pki", "kubelet"), "node")


async def test_a_joined_kubelet_runs_pods_and_only_the_master_reaches_its_api(
    cluster: Cluster, tmp_path: Path
) -> None:
    cred_dir = CredentialDir(tmp_path / "kubelet-pki", "kubelet")
    credentials = await _join(cluster, cred_dir, "node")
    info = pki.cert_info(credentials.cert_pem)
    assert (info.common_name, info.organizations) == (f"system:node:{NODE}", ("system:nodes",))
    api = Client(cluster.address, timeout=10, credentials=credentials)
    renewer = bootstrap.CertificateRenewer(
        cluster.address, cred_dir, "node", NODE, ["127.0.0.1"], on_renewed=api.use_credentials
    )
    config = kubelet_config(
        cluster.address, tmp_path, NODE, pod_cidr="10.244.7.0/24", credentials=cred_dir
    )
    runtime = FakeRuntime(pod_cidr="10.244.7.0/24", images=[BUSYBOX])
    kubelet = Kubelet(config, runtime, api, renewer=renewer)
    await kubelet.start()
    try:
        assert (await cluster.admin.nodes.get(NODE)).metadata.name == NODE
        assert kubelet.server is not None
        kubelet_port = kubelet.server.port
        pod = core_pb2.Pod()
        pod.metadata.name = "sleeper"
        pod.metadata.namespace = "default"
        pod.spec.node_name = NODE
        pod.spec.containers.add(name="main", image=BUSYBOX, command=["sleep", "3600"])
        await cluster.admin.pods.create(pod)
        for _ in range(200):
            current = await cluster.admin.pods.get("sleeper", "default")
            if current.status.phase == "Running":
                break
            await asyncio.sleep(0.05)
        assert current.status.phase == "Running"
        # Exec through the master: it dials the kubelet with its own identity.
        result = await pod_exec(cluster.admin, "sleeper", ["echo", "hi"])
        assert result.exit_code == 0
        # The admin itself, going to the kubelet directly, is refused by name.
        assert cluster.master.ca is not None
        admin_creds = cluster.master.ca.admin_credentials().with_server_name(NODE)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _list_pods(kubelet_port, admin_creds)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert '"kubeling-admin"' in (refused.value.details() or "")
        master_creds = cluster.master.ca.master_credentials().with_server_name(NODE)
        assert [p.metadata.name for p in (await _list_pods(kubelet_port, master_creds)).items] == [
            "sleeper"
        ]
        # Renewal: a new certificate from the master, the client switched, the
        # kubelet API serving the new one; nothing restarted.
        renewed = await renewer.renew_now()
        assert renewed.cert_pem != credentials.cert_pem
        assert renewer.renewals == 1
        assert await _served_serial(kubelet_port) == _serial(renewed.cert_pem)
        await api.nodes.get(NODE)  # the switched client
        assert [p.metadata.name for p in (await _list_pods(kubelet_port, master_creds)).items] == [
            "sleeper"
        ]
        # A node may not change another node (the master's node authorizer).
        other = core_pb2.Node()
        other.metadata.name = "someone-else"
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await api.nodes.create(other)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await kubelet.stop()
        await api.close()


async def test_a_joined_proxy_reads_services_and_writes_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    credentials = await _join(cluster, CredentialDir(tmp_path / "proxy-pki", "proxy"), "proxy")
    info = pki.cert_info(credentials.cert_pem)
    assert info.common_name == f"system:kube-proxy:{NODE}"
    async with Client(cluster.address, timeout=10, credentials=credentials) as api:
        await api.services.list_page("default")
        await api.endpoint_slices.list_page("default")
        service = core_pb2.Service()
        service.metadata.name = "sneaky"
        service.metadata.namespace = "default"
        service.spec.ports.add(port=80)
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await api.services.create(service)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def _list_pods(port: int, credentials: Credentials) -> core_pb2.PodList:
    async with rpc.channel(f"127.0.0.1:{port}", credentials=credentials) as channel:
        call = channel.unary_unary(
            "/kubeling.v1.Kubelet/ListPods",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=core_pb2.PodList.FromString,
        )
        reply: core_pb2.PodList = await call(kubelet_pb2.KubeletListPodsRequest(), timeout=10)
        return reply


async def _served_serial(port: int) -> int:
    def fetch() -> bytes:
        return ssl.get_server_certificate(("127.0.0.1", port)).encode()

    return _serial(await asyncio.to_thread(fetch))


def _serial(cert_pem: bytes) -> int:
    from cryptography import x509

    return int(x509.load_pem_x509_certificate(cert_pem).serial_number)
