"""Exec and Logs through a TLS master: the master dials the kubelet over TLS as
kubeling:master and checks that the kubelet's certificate names the pod's node, so
a Node whose address points at another node's kubelet gets no call through."""

from __future__ import annotations

from pathlib import Path

import grpc

from kubeling.client.pods import pod_exec, pod_logs
from kubeling.common import identity, pki
from kubeling.common.tls import CredentialDir, Credentials
from kubeling.cri.fake import FakeRuntime
from kubeling.kubelet.server import serve_kubelet_api
from kubeling.master.server import Master
from kubeling.v1 import core_pb2
from tests.integration.test_kubelet_api import FakeNode, cri_line, make_pod
from tests.integration.test_tls_master import refused
from tests.support.inprocess import tls_master


def kubelet_credentials(master: Master, node: str, directory: Path) -> CredentialDir:
    """What a joined kubelet keeps: its node certificate (SANs: name, 127.0.0.1)."""
    assert master.ca is not None
    issued = pki.issue(
        master.ca.ca, identity.NODE_PREFIX + node, (identity.GROUP_NODES,),
        server=True, client=True, dns_names=[node], ips=["127.0.0.1"],
    )  # fmt: skip
    where = CredentialDir(directory, "kubelet")
    where.save(Credentials(master.ca.ca_pem, issued.cert_pem, issued.key_pem))
    return where


def node_object(name: str, port: int) -> core_pb2.Node:
    node = core_pb2.Node()
    node.metadata.name = name
    node.status.addresses.add(type="InternalIP", address="127.0.0.1")
    node.status.daemon_endpoints.kubelet_endpoint.port = port
    return node


async def test_exec_and_logs_reach_only_the_named_nodes_kubelet(tmp_path: Path) -> None:
    async with tls_master(tmp_path / "master") as (master, admin):
        fake = FakeNode(FakeRuntime(), tmp_path / "pods", node_name="node-1")
        creds = kubelet_credentials(master, "node-1", tmp_path / "kubelet")
        kubelet = await serve_kubelet_api("127.0.0.1:0", fake, fake.runtime, 0.02, creds)
        try:
            await admin.nodes.create(node_object("node-1", kubelet.port))
            # Another Node claiming the same address (and so node-1's kubelet).
            await admin.nodes.create(node_object("imposter", kubelet.port))
            pod = make_pod("web", "app")
            pod.spec.node_name = "node-1"
            await fake.run_pod(await admin.pods.create(pod))
            fake.log("default", "web", "app", cri_line("hello"))

            reply = await pod_exec(admin, "web", ["echo", "hi"])
            assert (reply.stdout, reply.exit_code) == ("hi\n", 0)
            assert "".join([c async for c in pod_logs(admin, "web")]) == "hello\n"

            decoy = make_pod("decoy", "app")
            decoy.spec.node_name = "imposter"
            await fake.run_pod(await admin.pods.create(decoy))
            details = await refused(pod_exec(admin, "decoy", ["true"]), grpc.StatusCode.UNAVAILABLE)
            assert 'cannot reach the kubelet of node "imposter"' in details
        finally:
            await kubelet.stop(0)
