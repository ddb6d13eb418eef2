"""The authorizer's decisions (master/authz.py), call by call, without TLS in the way:
each role against each kind and method, the Node rules on stored objects, and the
calls real kubelets and proxies make."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from kubeling.api.errors import ApiError
from kubeling.api.kinds import ALL_KINDS, LEASE, NAMESPACE, NODE, POD, SERVICE, Kind
from kubeling.common import identity
from kubeling.common.handlers import Malformed
from kubeling.common.identity import Identity
from kubeling.master.authz import Authorizer
from kubeling.master.server import Master, MasterConfig
from kubeling.v1 import coordination_pb2, core_pb2, meta_pb2

ADMIN = Identity("root", (identity.GROUP_MASTERS,))
EDIT = Identity("ed", (identity.GROUP_EDIT,))
VIEW = Identity("vi", (identity.GROUP_VIEW,))
DNS = Identity("kube-dns", (identity.GROUP_DNS,))
W1 = identity.node_identity("w1")
PROXY = identity.proxy_identity("w1")
NOBODY = Identity("nobody", ("somegroup",))
WRITES = ("Create", "Update", "UpdateStatus", "Delete")


@pytest.fixture
async def authz(tmp_path: Path) -> AsyncIterator[Authorizer]:
    master = Master(MasterConfig(listen="127.0.0.1:0", data_dir=tmp_path, tls=False,
                                 controllers=set()))  # fmt: skip
    await master.store.open()
    await master._ensure_namespaces()
    try:
        yield Authorizer(master.registries)
    finally:
        await master.store.close()
        await master.supervisor.stop()


def allowed(authz: Authorizer, who: Identity, kind: Kind, method: str, request: object) -> bool:
    try:
        authz.check_kind(kind, method, who, request)
    except ApiError as refused:
        assert refused.code == grpc.StatusCode.PERMISSION_DENIED, refused
        assert f"user {who}" in refused.message
        return False
    return True


def get(name: str, namespace: str = "") -> meta_pb2.GetRequest:
    return meta_pb2.GetRequest(name=name, namespace=namespace)


def create(kind: Kind, name: str, namespace: str = "") -> object:
    obj = kind.message()
    obj.metadata.name = name  # type: ignore[attr-defined]
    obj.metadata.namespace = namespace  # type: ignore[attr-defined]
    return kind.create_request(**{kind.request_field: obj})


def test_roles_by_kind_and_method(authz: Authorizer) -> None:
    for kind in ALL_KINDS:
        for method in ("Get", "List", "Watch"):
            request = meta_pb2.ListRequest() if method != "Get" else get("x")
            assert allowed(authz, ADMIN, kind, method, request)
            assert allowed(authz, EDIT, kind, method, request)
            # view reads everything but Secrets (as Kubernetes' view role).
            assert allowed(authz, VIEW, kind, method, request) == (kind.name != "Secret")
            assert not allowed(authz, NOBODY, kind, method, request)
        for method in WRITES:
            request = create(kind, "x") if method != "Delete" else get("x")
            assert allowed(authz, ADMIN, kind, method, request)
            assert allowed(authz, EDIT, kind, method, request) == kind.namespaced, (kind, method)
            assert not allowed(authz, VIEW, kind, method, request)
            assert not allowed(authz, PROXY, kind, method, request) or kind.name == "Event"
    for method in ("Logs", "Exec", "Bind"):
        assert allowed(authz, EDIT, POD, method, get("p"))
        assert not allowed(authz, VIEW, POD, method, get("p"))
        assert not allowed(authz, W1, POD, method, get("p"))
        assert not allowed(authz, PROXY, POD, method, get("p"))
    for kind in (SERVICE, NODE):
        assert allowed(authz, PROXY, kind, "Watch", meta_pb2.WatchRequest())
    assert not allowed(authz, PROXY, POD, "List", meta_pb2.ListRequest())
    # A malformed request is refused as well, for a role without the method.
    assert not allowed(authz, VIEW, POD, "Delete", Malformed("x", "bad"))


def test_anonymous_callers_may_only_join(authz: Authorizer) -> None:
    with pytest.raises(ApiError) as refused:
        authz.check_kind(POD, "List", identity.ANONYMOUS, meta_pb2.ListRequest())
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "no client certificate" in refused.value.message
    authz.check_service("Certificates", "Join", identity.ANONYMOUS, None)
    for service, method in (("Certificates", "Renew"), ("Tokens", "List")):
        with pytest.raises(ApiError) as refused:
            authz.check_service(service, method, identity.ANONYMOUS, None)
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    for who in (EDIT, VIEW, W1, PROXY):
        for service, method in (("Tokens", "Create"), ("Certificates", "IssueUser")):
            with pytest.raises(ApiError) as refused:
                authz.check_service(service, method, who, None)
            assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        authz.check_service("Certificates", "Renew", who, None)
    authz.check_service("Tokens", "Delete", ADMIN, None)
    authz.check_service("Certificates", "IssueUser", ADMIN, None)


async def test_node_rules_look_at_stored_objects(authz: Authorizer) -> None:
    pods = authz.registries[POD.name]
    for name, node in (("mine", "w1"), ("theirs", "w2"), ("pending", "")):
        pod = core_pb2.Pod()
        pod.metadata.name = name
        pod.spec.node_name = node
        pod.spec.containers.add(name="c", image="i")
        await pods.create(pod)
    assert allowed(authz, W1, POD, "Get", get("mine", "default"))
    assert allowed(authz, W1, POD, "Delete", get("mine"))
    assert not allowed(authz, W1, POD, "Get", get("theirs"))
    assert not allowed(authz, W1, POD, "Get", get("pending"))
    assert not allowed(authz, W1, POD, "Get", get("absent"))
    status = core_pb2.UpdatePodRequest()
    status.pod.metadata.name = "theirs"
    assert not allowed(authz, W1, POD, "UpdateStatus", status)
    status.pod.metadata.name = "mine"
    assert allowed(authz, W1, POD, "UpdateStatus", status)
    for selector, ok in (
        ("spec.nodeName=w1", True),
        ("metadata.namespace=default,spec.nodeName=w1", True),
        ("spec.nodeName==w1", True),
        ("spec.nodeName!=w1", False),
        ("spec.nodeName=w2", False),
        ("", False),
    ):
        request = meta_pb2.WatchRequest(field_selector=selector)
        assert allowed(authz, W1, POD, "Watch", request) == ok, selector
    # Leases: its own, in kube-node-lease only.
    assert allowed(authz, W1, LEASE, "Create", create(LEASE, "w1", "kube-node-lease"))
    assert allowed(authz, W1, LEASE, "Get", get("w1", "kube-node-lease"))
    assert not allowed(authz, W1, LEASE, "Get", get("w2", "kube-node-lease"))
    assert not allowed(authz, W1, LEASE, "Create", create(LEASE, "w1", "default"))
    assert not allowed(authz, W1, LEASE, "List", meta_pb2.ListRequest())
    assert allowed(authz, W1, NAMESPACE, "Get", get("default"))
    assert not allowed(authz, W1, NAMESPACE, "Create", create(NAMESPACE, "x"))


def test_denials_name_identity_verb_and_resource(authz: Authorizer) -> None:
    request = core_pb2.UpdateNodeRequest()
    request.node.metadata.name = "w2"
    with pytest.raises(ApiError) as refused:
        authz.check_kind(NODE, "Update", W1, request)
    assert refused.value.message == (
        'user "system:node:w1" (groups system:nodes) cannot update nodes "w2": '
        "a node may change only its own Node"
    )
    with pytest.raises(ApiError) as refused:
        authz.check_kind(POD, "Exec", VIEW, core_pb2.PodExecRequest(name="web"))
    assert refused.value.message.startswith(
        'user "vi" (groups kubeling:view) cannot create pods/exec "web" in namespace "default"'
    )


def test_the_calls_kubelets_and_proxies_make_are_allowed(authz: Authorizer) -> None:
    """kubelet/node.py, kubelet/kubelet.py, kubelet/routes.py, proxy/kubeproxy.py and
    client/events.py, as grepped: each call they make through the client."""
    node_calls: list[tuple[Kind, str, object]] = [
        (NODE, "Get", get("w1")),
        (NODE, "Create", create(NODE, "w1")),
        (NODE, "UpdateStatus", create(NODE, "w1")),
        (NODE, "List", meta_pb2.ListRequest()),  # routes.py: every Node's podCIDR
        (NODE, "Watch", meta_pb2.WatchRequest(field_selector="metadata.name=w1")),
        (POD, "List", meta_pb2.ListRequest(field_selector="spec.nodeName=w1")),
        (POD, "Watch", meta_pb2.WatchRequest(field_selector="spec.nodeName=w1")),
        (LEASE, "Get", get("w1", "kube-node-lease")),
        (LEASE, "Create", create(LEASE, "w1", "kube-node-lease")),
        (LEASE, "Update", create(LEASE, "w1", "kube-node-lease")),
    ]
    from kubeling.api.kinds import ENDPOINT_SLICE, EVENT

    node_calls += [(EVENT, m, create(EVENT, "e", "default")) for m in ("Create", "Update")]
    for kind, method, request in node_calls:
        if method in ("Update", "Create") and kind is LEASE:
            lease = coordination_pb2.Lease()
            lease.metadata.name, lease.metadata.namespace = "w1", "kube-node-lease"
            request = kind.update_request(lease=lease)
        assert allowed(authz, W1, kind, method, request), (kind.name, method)
    proxy_calls = [
        (SERVICE, "List", meta_pb2.ListRequest()),
        (SERVICE, "Watch", meta_pb2.WatchRequest()),
        (ENDPOINT_SLICE, "List", meta_pb2.ListRequest()),
        (ENDPOINT_SLICE, "Watch", meta_pb2.WatchRequest()),
        (NODE, "Watch", meta_pb2.WatchRequest(field_selector="metadata.name=w1")),
        (EVENT, "Create", create(EVENT, "e", "default")),
    ]
    for kind, method, request in proxy_calls:
        assert allowed(authz, PROXY, kind, method, request), (kind.name, method)


def test_the_dns_role_reads_services_endpointslices_and_namespaces_only(
    authz: Authorizer,
) -> None:
    readable = {"Service", "EndpointSlice", "Namespace"}
    for kind in ALL_KINDS:
        for method in ("Get", "List", "Watch"):
            request = meta_pb2.ListRequest() if method != "Get" else get("x")
            assert allowed(authz, DNS, kind, method, request) == (kind.name in readable)
        for method in WRITES:
            request = create(kind, "x") if method != "Delete" else get("x")
            assert not allowed(authz, DNS, kind, method, request)
    # A certificate naming both dns and edit gets only the narrower dns role.
    both = Identity("kube-dns", (identity.GROUP_EDIT, identity.GROUP_DNS))
    assert both.role == identity.DNS
