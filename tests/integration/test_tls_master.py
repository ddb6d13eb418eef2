"""A master serving mutual TLS (in process, 127.0.0.1, its join port too): who gets
in, and what each role may do (master/authz.py, master/cluster_ca.py)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import grpc
import pytest

from kubeling.api.objects import clone
from kubeling.client import Client
from kubeling.client.pods import pod_exec, pod_logs
from kubeling.common import identity, pki
from kubeling.common.tls import Credentials
from kubeling.master.server import Master, MasterConfig
from kubeling.v1 import apps_pb2, core_pb2, discovery_pb2, meta_pb2
from tests.support.inprocess import tls_master

Code = grpc.StatusCode


def credentials(master: Master, user: str, *groups: str) -> Credentials:
    """A client certificate of the master's CA for `user` in `groups`."""
    assert master.ca is not None
    issued = pki.issue(master.ca.ca, user, groups)
    return Credentials(master.ca.ca_pem, issued.cert_pem, issued.key_pem)


def client_as(master: Master, user: str, *groups: str) -> Client:
    return Client(
        f"127.0.0.1:{master.server.port if master.server else 0}",
        timeout=10,
        credentials=credentials(master, user, *groups),
    )


def node_client(master: Master, name: str) -> Client:
    return client_as(master, identity.NODE_PREFIX + name, identity.GROUP_NODES)


async def refused(call: object, code: Code = Code.PERMISSION_DENIED) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    assert error.value.code() == code, error.value.details()
    return error.value.details() or ""


def node(name: str, **labels: str) -> core_pb2.Node:
    obj = core_pb2.Node()
    obj.metadata.name = name
    obj.metadata.labels.update(labels)
    obj.status.addresses.add(type="InternalIP", address="10.1.0.1")
    return obj


def pod(name: str, node_name: str = "") -> core_pb2.Pod:
    obj = core_pb2.Pod()
    obj.metadata.name = name
    obj.spec.node_name = node_name
    obj.spec.containers.add(name="c", image="busybox")
    return obj


def service(name: str) -> core_pb2.Service:
    obj = core_pb2.Service()
    obj.metadata.name = name
    obj.spec.ports.add(port=80)
    return obj


# --------------------------------------------------------------- authentication


async def test_admin_conf_works_and_files_are_private(tmp_path: Path) -> None:
    async with tls_master(tmp_path) as (_, admin):
        await admin.namespaces.get("default")
        pki_dir = tmp_path / "pki"
        for path in [*pki_dir.iterdir(), tmp_path / "admin.conf"]:
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
        assert stat.S_IMODE(os.stat(pki_dir).st_mode) == 0o700
        # The serving chain carries the CA (a joining node reads it from there).
        chain = (pki_dir / "server.crt").read_bytes()
        assert chain.endswith((pki_dir / "ca.crt").read_bytes())
        info = pki.cert_info(chain)
        assert "127.0.0.1" in info.ips and "localhost" in info.dns_names
    ca_before = (tmp_path / "pki" / "ca.crt").read_bytes()
    key_before = (tmp_path / "pki" / "ca.key").read_bytes()
    # A restart with another SAN keeps the CA and remakes the serving certificate.
    async with tls_master(tmp_path, tls_sans=["master.example", "192.0.2.7"]) as (_, admin):
        await admin.namespaces.get("default")
        info = pki.cert_info((tmp_path / "pki" / "server.crt").read_bytes())
        assert "master.example" in info.dns_names and "192.0.2.7" in info.ips
    assert (tmp_path / "pki" / "ca.crt").read_bytes() == ca_before
    assert (tmp_path / "pki" / "ca.key").read_bytes() == key_before


async def test_no_certificate_or_another_ca_is_refused(tmp_path: Path) -> None:
    async with tls_master(tmp_path) as (master, _):
        assert master.ca is not None and master.server is not None
        port, join_port = master.server.port, master.join_port
        # Main port: the handshake needs a client certificate.
        anonymous = Credentials(master.ca.ca_pem, b"", b"")
        async with Client(f"127.0.0.1:{port}", timeout=5, credentials=anonymous) as api:
            await refused(api.pods.list(), Code.UNAVAILABLE)
        # Join port: in, but only for Certificates/Join.
        async with Client(f"127.0.0.1:{join_port}", timeout=5, credentials=anonymous) as api:
            details = await refused(api.pods.list(), Code.UNAUTHENTICATED)
            assert "no client certificate" in details
            await refused(api.nodes.create(node("w1")), Code.UNAUTHENTICATED)
        # A certificate from another CA, trusting ours.
        other = pki.make_ca("another-ca")
        stranger = pki.issue(other, "kubeling-admin", (identity.GROUP_MASTERS,))
        forged = Credentials(master.ca.ca_pem, stranger.cert_pem, stranger.key_pem)
        async with Client(f"127.0.0.1:{port}", timeout=5, credentials=forged) as api:
            await refused(api.pods.list(), Code.UNAVAILABLE)
        # A plaintext client gets nowhere either.
        async with Client(f"127.0.0.1:{port}", timeout=5) as api:
            await refused(api.pods.list(), Code.UNAVAILABLE)
        # A certificate of our CA without a role is known but may do nothing.
        async with client_as(master, "nobody") as api:
            details = await refused(api.pods.list())
            assert 'user "nobody"' in details


# ------------------------------------------------------------------ node rules


async def test_a_node_may_change_only_its_own_node_and_pods(tmp_path: Path) -> None:
    async with (
        tls_master(tmp_path) as (master, admin),
        node_client(master, "w1") as w1,
        node_client(master, "w2") as w2,
    ):
        await w1.nodes.create(node("w1"))
        await w2.nodes.create(node("w2"))
        # Not another's Node, not in any way.
        other = await w1.nodes.get("w2")
        details = await refused(w1.nodes.update(clone(other)))
        assert details.startswith(
            'user "system:node:w1" (groups system:nodes) cannot update nodes "w2": '
            "a node may change only its own Node"
        ), details
        await refused(w1.nodes.update_status(clone(other)))
        await refused(w1.nodes.delete("w2"))
        await refused(w1.nodes.create(node("w3")))
        # Its own Node's status: yes; its podCIDR, taints, protected labels: no.
        own = await w1.nodes.get("w1")
        fresh = clone(own)
        fresh.status.conditions.add(type="Ready", status="True")
        own = await w1.nodes.update_status(fresh)
        assert own.status.conditions[0].status == "True"
        cidr = clone(own)
        cidr.spec.pod_cidr = "10.244.1.0/24"
        assert "podCIDR" in await refused(w1.nodes.update(cidr))
        tainted = clone(own)
        tainted.spec.taints.add(key="x", effect="NoSchedule")
        assert "taints" in await refused(w1.nodes.update(tainted))
        labelled = clone(own)
        labelled.metadata.labels["node-role.kubernetes.io/control-plane"] = ""
        await refused(w1.nodes.update(labelled))
        plain_label = clone(own)
        plain_label.metadata.labels["example.com/disk"] = "ssd"
        await w1.nodes.update(plain_label)
        await refused(w1.nodes.create(node("w1b")))
        with_cidr = node("w3")
        with_cidr.spec.pod_cidr = "10.244.3.0/24"
        async with node_client(master, "w3") as w3:
            assert "podCIDR" in await refused(w3.nodes.create(with_cidr))

        # Pods: only those bound to it.
        await admin.pods.create(pod("on-w1", "w1"))
        await admin.pods.create(pod("on-w2", "w2"))
        mine = await w1.pods.get("on-w1")
        mine.status.phase = "Running"
        assert (await w1.pods.update_status(mine)).status.phase == "Running"
        theirs = await admin.pods.get("on-w2")
        theirs.status.phase = "Failed"
        assert "not bound to this node" in await refused(w1.pods.update_status(theirs))
        await refused(w1.pods.get("on-w2"))
        await refused(w1.pods.delete("on-w2"))
        await refused(w1.pods.create(pod("new", "w1")))
        await refused(w1.pods.update(mine))
        await refused(w1.pods.list())
        listed = await w1.pods.list(field_selector="spec.nodeName=w1")
        assert [p.metadata.name for p in listed.items] == ["on-w1"]
        await refused(w1.pods.list(field_selector="spec.nodeName=w2"))
        await refused(pod_exec(w1, "on-w1", ["true"]))
        await w1.pods.delete("on-w1")

        # Services, EndpointSlices: read only.
        await admin.services.create(service("web"))
        svc = await w1.services.get("web")
        await refused(w1.services.update(svc))
        await refused(w1.services.create(service("evil")))
        await refused(w1.services.delete("web"))
        eps = discovery_pb2.EndpointSlice()
        eps.metadata.name = "web-x"
        eps.address_type = "IPv4"
        await refused(w1.endpoint_slices.create(eps))
        await w1.endpoint_slices.list()
        await refused(w1.deployments.list())

        # Leases: only its own in kube-node-lease.
        from kubeling.v1 import coordination_pb2

        lease = coordination_pb2.Lease()
        lease.metadata.name = "w1"
        lease.metadata.namespace = "kube-node-lease"
        await w1.leases.create(lease)
        other_lease = clone(lease)
        other_lease.metadata.name = "w2"
        await refused(w1.leases.create(other_lease))
        await refused(w1.leases.get("w2", "kube-node-lease"))
        # Nor tokens or users.
        await refused(w1.nodes.delete("w2"))
        assert (await admin.nodes.get("w2")).metadata.name == "w2"
        await w1.nodes.delete("w1")


async def test_a_proxy_reads_services_and_nodes_only(tmp_path: Path) -> None:
    async with tls_master(tmp_path) as (master, admin):
        await admin.services.create(service("web"))
        proxy_user = identity.PROXY_PREFIX + "w1"
        async with client_as(master, proxy_user, identity.GROUP_PROXIES) as proxy:
            await proxy.services.list()
            await proxy.endpoint_slices.list()
            await proxy.nodes.list()
            await refused(proxy.pods.list())
            await refused(proxy.services.delete("web"))
            await refused(proxy.nodes.create(node("w1")))


# ------------------------------------------------------------------ user roles


async def test_view_reads_only_and_edit_writes_namespaced_objects(tmp_path: Path) -> None:
    async with tls_master(tmp_path) as (master, admin):
        await admin.nodes.create(node("w1"))
        await admin.pods.create(pod("web", "w1"))
        async with (
            client_as(master, "viewer", identity.GROUP_VIEW) as view,
            client_as(master, "editor", identity.GROUP_EDIT) as edit,
        ):
            await view.pods.list()
            await view.nodes.get("w1")
            details = await refused(view.pods.create(pod("x")))
            assert details.startswith('user "viewer" (groups kubeling:view) cannot create pods'), (
                details
            )
            await refused(view.pods.delete("web"))
            exec_refused = await refused(pod_exec(view, "web", ["sh"]))
            assert "cannot create pods/exec" in exec_refused
            assert "cannot get pods/log" in await refused(pod_logs(view, "web").__anext__())
            await refused(view.nodes.delete("w1"))

            made = await edit.pods.create(pod("by-edit"))
            made.metadata.labels["a"] = "b"
            await edit.pods.update(made)
            await edit.pods.delete("by-edit")
            deploy = apps_pb2.Deployment()
            deploy.metadata.name = "d"
            deploy.spec.selector.match_labels["app"] = "d"
            deploy.spec.template.metadata.labels["app"] = "d"
            deploy.spec.template.spec.containers.add(name="c", image="busybox")
            await edit.deployments.create(deploy)
            # Exec and Logs pass authorization (then: the pod's node does not exist).
            await admin.pods.create(pod("lost", "ghost"))
            await refused(pod_exec(edit, "lost", ["true"]), Code.NOT_FOUND)
            await refused(pod_logs(edit, "lost").__anext__(), Code.NOT_FOUND)
            await refused(edit.nodes.delete("w1"))
            await refused(edit.namespaces.delete("default"))
            ns = core_pb2.Namespace()
            ns.metadata.name = "team"
            await refused(edit.namespaces.create(ns))


# ----------------------------------------------------------------- hostile input


async def test_pod_cidrs_must_be_inside_the_cluster_cidr(tmp_path: Path) -> None:
    from kubeling.controllers.manager import ControllerSettings

    async with tls_master(
        tmp_path, controller_settings=ControllerSettings(cluster_cidr="10.244.0.0/16")
    ) as (_, admin):
        everything = node("a")
        everything.spec.pod_cidr = "0.0.0.0/0"
        assert "prefix length" in await refused(
            admin.nodes.create(everything), Code.INVALID_ARGUMENT
        )
        outside = node("b")
        outside.spec.pod_cidr = "192.168.7.0/24"
        assert "cluster CIDR" in await refused(admin.nodes.create(outside), Code.INVALID_ARGUMENT)
        later = await admin.nodes.create(node("c"))
        later.spec.pod_cidr = "172.16.0.0/24"
        await refused(admin.nodes.update(later), Code.INVALID_ARGUMENT)
        inside = node("d")
        inside.spec.pod_cidr = "10.244.4.0/24"
        inside.spec.pod_cidrs.append("10.244.4.0/24")
        assert (await admin.nodes.create(inside)).spec.pod_cidr == "10.244.4.0/24"


async def test_tokens_are_for_admins(tmp_path: Path) -> None:
    from kubeling.v1 import tokens_pb2

    async with tls_master(tmp_path) as (master, admin):
        method = "/kubeling.v1.Tokens/Create"

        async def create(api: Client) -> tokens_pb2.CreateTokenResponse:
            call = api.channel.unary_unary(
                method,
                request_serializer=tokens_pb2.CreateTokenRequest.SerializeToString,
                response_deserializer=tokens_pb2.CreateTokenResponse.FromString,
            )
            reply: tokens_pb2.CreateTokenResponse = await call(
                tokens_pb2.CreateTokenRequest(), timeout=5
            )
            return reply

        # Over TLS an admin on any address may; the local-peer rule is for plaintext.
        assert (await create(admin)).token
        async with client_as(master, "editor", identity.GROUP_EDIT) as edit:
            assert "bootstrap tokens are for admins" in await refused(create(edit))
        assert master.tokens.list()


async def test_a_master_without_tls_refuses_wide_addresses(tmp_path: Path) -> None:
    from kubeling.common.rpc import PlaintextRefused

    master = Master(MasterConfig(listen="0.0.0.0:0", data_dir=tmp_path, tls=False,
                                 controllers=set()))  # fmt: skip
    with pytest.raises(PlaintextRefused):
        await master.start()
    await master.stop()
    assert not (tmp_path / "pki").exists()


async def test_a_renamed_object_in_a_malformed_request_is_not_a_way_in(tmp_path: Path) -> None:
    """Requests that do not parse reach no handler for a role without the method."""
    async with (
        tls_master(tmp_path) as (master, _),
        client_as(master, "viewer", identity.GROUP_VIEW) as view,
    ):
        call = view.channel.unary_unary(
            "/kubeling.v1.Pods/Delete",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        await refused(call(b"\xff\xff\xff", timeout=5))
        get = view.channel.unary_unary(
            "/kubeling.v1.Pods/Get",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        await refused(get(b"\xff\xff\xff", timeout=5), Code.INVALID_ARGUMENT)
        # A well-formed Get of nothing is just NOT_FOUND.
        await refused(
            get(meta_pb2.GetRequest(name="x").SerializeToString(), timeout=5), Code.NOT_FOUND
        )


async def test_the_master_remakes_its_certificates_while_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubeling.master import server as master_server
    from tests.support.waiting import eventually

    monkeypatch.setattr(master_server, "CERT_CHECK_INTERVAL", 0.2)
    # An hour's validity is always within 30 days of its end: remade at every check.
    async with tls_master(tmp_path, cert_validity=3600.0) as (master, _):
        served = (tmp_path / "pki" / "server.crt").read_bytes()
        conf = master.admin_conf.read_text()
        before = master.pod_proxy.credentials
        assert pki.cert_info(served).not_after.timestamp() - time.time() < 3700

        def remade() -> bool:
            return (tmp_path / "pki" / "server.crt").read_bytes() != served

        await eventually(remade, 10)
        await eventually(lambda: master.pod_proxy.credentials != before, 10)
        await eventually(lambda: master.admin_conf.read_text() != conf, 10)
        # New connections get the new serving certificate and are still let in.
        async with Client.from_config(master.admin_conf, timeout=5) as fresh:
            await fresh.namespaces.get("default")
