"""API semantics against a real master process over gRPC."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from kubeling.api.errors import field_violations
from kubeling.client import Client
from kubeling.v1 import core_pb2, discovery_pb2

pytestmark = pytest.mark.asyncio(loop_scope="session")


def make_pod(name: str, labels: dict[str, str] | None = None, node: str = "") -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = "default"
    pod.metadata.labels.update(labels or {})
    pod.spec.containers.add(name="main", image="busybox:1.36")
    pod.spec.node_name = node
    return pod


def make_service(name: str, **spec: object) -> core_pb2.Service:
    svc = core_pb2.Service()
    svc.metadata.name = name
    svc.metadata.namespace = "default"
    svc.spec.selector["app"] = name
    svc.spec.ports.add(port=80)
    for field, value in spec.items():
        setattr(svc.spec, field, value)
    return svc


async def expect_code(code: grpc.StatusCode, coro: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    return info.value


async def test_create_get_update_delete_round_trip(api: Client) -> None:
    created = await api.pods.create(make_pod("crud"))
    assert created.metadata.uid
    assert created.metadata.generation == 1
    assert created.metadata.creation_timestamp.seconds > 0
    assert created.api_version == "v1" and created.kind == "Pod"
    assert created.status.phase == "Pending"
    # Defaults as Kubernetes applies them.
    assert created.spec.restart_policy == "Always"
    assert created.spec.termination_grace_period_seconds == 30
    assert created.spec.containers[0].image_pull_policy == "IfNotPresent"

    got = await api.pods.get("crud", "default")
    assert got == created

    got.spec.containers[0].image = "busybox:1.37"
    updated = await api.pods.update(got)
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    assert updated.metadata.generation == 2
    assert updated.metadata.uid == created.metadata.uid

    deleted = await api.pods.delete("crud", "default")
    assert deleted.metadata.name == "crud"
    await expect_code(grpc.StatusCode.NOT_FOUND, api.pods.get("crud", "default"))


async def test_every_write_gets_a_higher_global_revision(api: Client) -> None:
    a = await api.pods.create(make_pod("rev-a"))
    svc = await api.services.create(make_service("rev-svc"))
    b = await api.pods.create(make_pod("rev-b"))
    revs = [int(o.metadata.resource_version) for o in (a, svc, b)]
    assert revs == sorted(revs) and len(set(revs)) == 3


async def test_create_existing_is_already_exists(api: Client) -> None:
    await api.pods.create(make_pod("dup"))
    error = await expect_code(grpc.StatusCode.ALREADY_EXISTS, api.pods.create(make_pod("dup")))
    assert 'pods "dup"' in (error.details() or "")


async def test_stale_resource_version_is_aborted(api: Client) -> None:
    first = await api.pods.create(make_pod("stale"))
    fresh = core_pb2.Pod()
    fresh.CopyFrom(first)
    fresh.metadata.labels["v"] = "2"
    await api.pods.update(fresh)
    first.metadata.labels["v"] = "3"
    await expect_code(grpc.StatusCode.ABORTED, api.pods.update(first))
    await expect_code(
        grpc.StatusCode.ABORTED,
        api.pods.delete("stale", "default", resource_version=first.metadata.resource_version),
    )
    assert (await api.pods.get("stale", "default")).metadata.labels["v"] == "2"


async def test_update_status_only_changes_status(api: Client) -> None:
    pod = await api.pods.create(make_pod("status"))
    pod.status.phase = "Running"
    pod.status.pod_ip = "10.244.1.5"
    pod.spec.containers[0].image = "ignored-by-status-update"
    updated = await api.pods.update_status(pod)
    assert updated.status.phase == "Running"
    assert updated.spec.containers[0].image == "busybox:1.36"
    # ...and a spec update keeps the status.
    updated.status.phase = "Failed"
    updated.metadata.labels["x"] = "y"
    again = await api.pods.update(updated)
    assert again.status.phase == "Running"
    assert again.metadata.labels["x"] == "y"


async def test_invalid_input_names_each_bad_field(api: Client) -> None:
    pod = make_pod("Bad_Name")
    pod.spec.containers.add(name="main", image="")
    pod.spec.restart_policy = "Sometimes"
    error = await expect_code(grpc.StatusCode.INVALID_ARGUMENT, api.pods.create(pod))
    fields = {v.field for v in field_violations(error)}
    assert {
        "metadata.name",
        "spec.containers[1].name",
        "spec.containers[1].image",
        "spec.restartPolicy",
    } <= fields


async def test_unknown_namespace_is_not_found(api: Client) -> None:
    pod = make_pod("nowhere")
    pod.metadata.namespace = "no-such-namespace"
    await expect_code(grpc.StatusCode.NOT_FOUND, api.pods.create(pod))


async def test_label_and_field_selectors(api: Client) -> None:
    await api.namespaces.create(core_pb2.Namespace(metadata={"name": "selectors"}))
    for name, labels, node in [
        ("s1", {"app": "web", "tier": "front"}, "node-a"),
        ("s2", {"app": "web", "tier": "back"}, "node-b"),
        ("s3", {"app": "db"}, "node-a"),
        ("s4", {}, ""),
    ]:
        pod = make_pod(name, labels, node)
        pod.metadata.namespace = "selectors"
        await api.pods.create(pod)

    async def names(labels: str = "", fields: str = "") -> list[str]:
        result = await api.pods.list("selectors", labels, fields)
        return [p.metadata.name for p in result.items]

    assert await names("app=web") == ["s1", "s2"]
    assert await names("app!=web") == ["s3", "s4"]
    assert await names("tier in (front,middle)") == ["s1"]
    assert await names("tier notin (front)") == ["s2", "s3", "s4"]
    assert await names("tier") == ["s1", "s2"]
    assert await names("!tier") == ["s3", "s4"]
    assert await names(fields="spec.nodeName=node-a") == ["s1", "s3"]
    assert await names("app=web", "spec.nodeName!=node-a") == ["s2"]
    assert await names(fields="spec.nodeName=") == ["s4"]
    assert await names(fields="metadata.name=s3") == ["s3"]
    assert await names(fields="status.phase=Pending") == ["s1", "s2", "s3", "s4"]
    error = await expect_code(grpc.StatusCode.INVALID_ARGUMENT, api.pods.list("", "a in (b"))
    assert field_violations(error)[0].field == "label_selector"
    error = await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT, api.pods.list("", "", "spec.bogus=1")
    )
    assert "spec.bogus" in (error.details() or "")


async def test_pagination_is_a_consistent_snapshot(api: Client) -> None:
    await api.namespaces.create(core_pb2.Namespace(metadata={"name": "pages"}))
    for i in range(25):
        pod = make_pod(f"p{i:02d}")
        pod.metadata.namespace = "pages"
        await api.pods.create(pod)
    page = await api.pods.list_page("pages", limit=10)
    assert [p.metadata.name for p in page.items] == [f"p{i:02d}" for i in range(10)]
    assert page.continue_token
    # Changes after the first page do not show up in the following pages.
    late = make_pod("p05-late")
    late.metadata.namespace = "pages"
    await api.pods.create(late)
    await api.pods.delete("p20", "pages")
    seen = [p.metadata.name for p in page.items]
    while page.continue_token:
        page = await api.pods.list_page("pages", limit=10, continue_token=page.continue_token)
        seen += [p.metadata.name for p in page.items]
    assert seen == [f"p{i:02d}" for i in range(25)]
    await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT, api.pods.list_page("pages", continue_token="garbage!")
    )


async def test_list_then_watch_sends_added_then_bookmark_then_changes(api: Client) -> None:
    await api.namespaces.create(core_pb2.Namespace(metadata={"name": "watching"}))
    pod = make_pod("w1", {"app": "w"})
    pod.metadata.namespace = "watching"
    await api.pods.create(pod)
    events = api.pods.watch("watching")
    first = await anext(events)
    assert (first.type, first.object.metadata.name) == ("ADDED", "w1")
    bookmark = await anext(events)
    assert bookmark.type == "BOOKMARK"
    assert bookmark.object.metadata.annotations["k8s.io/initial-events-end"] == "true"
    pod2 = make_pod("w2")
    pod2.metadata.namespace = "watching"
    created = await api.pods.create(pod2)
    event = await asyncio.wait_for(anext(events), 5)
    assert (event.type, event.object.metadata.name) == ("ADDED", "w2")
    assert event.resource_version == created.metadata.resource_version
    await api.pods.delete("w2", "watching")
    event = await asyncio.wait_for(anext(events), 5)
    assert (event.type, event.object.metadata.name) == ("DELETED", "w2")
    await events.aclose()


async def test_watch_from_a_revision_and_selector_transitions(api: Client) -> None:
    pod = await api.pods.create(make_pod("trans", {"app": "a"}))
    events = api.pods.watch("default", "app=b", resource_version=pod.metadata.resource_version)
    pod.metadata.labels["app"] = "b"
    await api.pods.update(pod)
    event = await asyncio.wait_for(anext(events), 5)
    assert (event.type, event.object.metadata.labels["app"]) == ("ADDED", "b")
    current = await api.pods.get("trans", "default")
    current.metadata.labels["app"] = "c"
    await api.pods.update(current)
    event = await asyncio.wait_for(anext(events), 5)
    assert (event.type, event.object.metadata.labels["app"]) == ("DELETED", "c")
    await events.aclose()


async def test_watch_sends_periodic_bookmarks(api: Client) -> None:
    # From the current revision (a future one is refused): nothing to send but bookmarks.
    current = (await api.pods.list("default")).resource_version
    events = api.pods.watch(
        "default", field_selector="metadata.name=nobody", resource_version=current
    )
    event = await asyncio.wait_for(anext(events), 5)  # the master runs with 1 s bookmarks
    assert event.type == "BOOKMARK"
    await events.aclose()


async def test_watch_from_a_too_old_revision_is_out_of_range(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from tests.support.processes import running_master

    with running_master(tmp_path_factory.mktemp("small"), "--history", "20") as small:
        async with Client(small.address) as client:
            for i in range(60):
                await client.pods.create(make_pod(f"old{i}"))
            events = client.pods.watch("default", resource_version="2")
            error = await expect_code(grpc.StatusCode.OUT_OF_RANGE, anext(events))
            assert "too old resource version" in (error.details() or "")


async def test_pod_deletion_is_graceful_when_bound_to_a_node(api: Client) -> None:
    await api.pods.create(make_pod("graceful", node="node-1"))
    marked = await api.pods.delete("graceful", "default", grace_period_seconds=20)
    assert marked.metadata.HasField("deletion_timestamp")
    assert marked.metadata.deletion_grace_period_seconds == 20
    still = await api.pods.get("graceful", "default")
    assert still.metadata.deletion_timestamp == marked.metadata.deletion_timestamp
    # The node's kubelet finishes it with grace 0 once its containers stopped.
    await api.pods.delete("graceful", "default", grace_period_seconds=0)
    await expect_code(grpc.StatusCode.NOT_FOUND, api.pods.get("graceful", "default"))
    # A pod bound to no node goes at once.
    await api.pods.create(make_pod("unbound"))
    await api.pods.delete("unbound", "default")
    await expect_code(grpc.StatusCode.NOT_FOUND, api.pods.get("unbound", "default"))


async def test_finalizers_hold_an_object_until_removed(api: Client) -> None:
    pod = make_pod("finalized")
    pod.metadata.finalizers.append("example.com/hold")
    await api.pods.create(pod)
    marked = await api.pods.delete("finalized", "default")
    assert marked.metadata.HasField("deletion_timestamp")
    del marked.metadata.finalizers[:]
    await api.pods.update(marked)
    await expect_code(grpc.StatusCode.NOT_FOUND, api.pods.get("finalized", "default"))


async def test_deleting_a_namespace_deletes_its_content(api: Client) -> None:
    await api.namespaces.create(core_pb2.Namespace(metadata={"name": "doomed"}))
    for i in range(3):
        pod = make_pod(f"d{i}")
        pod.metadata.namespace = "doomed"
        await api.pods.create(pod)
    svc = make_service("doomed-svc")
    svc.metadata.namespace = "doomed"
    await api.services.create(svc)
    ns = await api.namespaces.delete("doomed")
    assert ns.status.phase == "Terminating"
    pod = make_pod("late")
    pod.metadata.namespace = "doomed"
    await expect_code(grpc.StatusCode.FAILED_PRECONDITION, api.pods.create(pod))
    for _ in range(100):
        try:
            await api.namespaces.get("doomed")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("namespace was not removed")
    assert (await api.pods.list("doomed")).items == []
    assert (await api.services.list("doomed")).items == []
    await expect_code(grpc.StatusCode.FAILED_PRECONDITION, api.namespaces.delete("default"))


async def test_services_get_cluster_ips_and_node_ports(api: Client) -> None:
    a = await api.services.create(make_service("ip-a"))
    b = await api.services.create(make_service("ip-b", type="NodePort"))
    assert a.spec.cluster_ip.startswith("10.") and a.spec.cluster_ip != b.spec.cluster_ip
    assert list(a.spec.cluster_ips) == [a.spec.cluster_ip]
    assert 30000 <= b.spec.ports[0].node_port <= 32767
    assert a.spec.ports[0].target_port.number_value == 80
    # A taken IP or port is rejected, naming the field.
    taken = make_service("ip-c", cluster_ip=a.spec.cluster_ip)
    error = await expect_code(grpc.StatusCode.INVALID_ARGUMENT, api.services.create(taken))
    assert field_violations(error)[0].field == "spec.clusterIP"
    clash = make_service("ip-d", type="NodePort")
    clash.spec.ports[0].node_port = b.spec.ports[0].node_port
    error = await expect_code(grpc.StatusCode.INVALID_ARGUMENT, api.services.create(clash))
    assert field_violations(error)[0].field == "spec.ports[0].nodePort"
    outside = make_service("ip-e", cluster_ip="192.168.1.1")
    await expect_code(grpc.StatusCode.INVALID_ARGUMENT, api.services.create(outside))
    # Re-applying without the allocated values keeps them; deleting frees them.
    again = make_service("ip-b", type="NodePort")
    kept = await api.services.update(again)
    assert kept.spec.cluster_ip == b.spec.cluster_ip
    assert kept.spec.ports[0].node_port == b.spec.ports[0].node_port
    await api.services.delete("ip-a", "default")
    reuse = await api.services.create(make_service("ip-f", cluster_ip=a.spec.cluster_ip))
    assert reuse.spec.cluster_ip == a.spec.cluster_ip


async def test_endpoint_slices_round_trip(api: Client) -> None:
    eps = discovery_pb2.EndpointSlice()
    eps.metadata.name = "web-abc"
    eps.metadata.namespace = "default"
    eps.metadata.labels["kubernetes.io/service-name"] = "web"
    eps.address_type = "IPv4"
    ep = eps.endpoints.add(addresses=["10.244.1.4"])
    ep.conditions.ready = True
    eps.ports.add(name="http", port=8080)
    created = await api.endpoint_slices.create(eps)
    assert created.ports[0].protocol == "TCP"
    listed = await api.endpoint_slices.list("default", "kubernetes.io/service-name=web")
    assert [e.metadata.name for e in listed.items] == ["web-abc"]


async def test_bind_sets_node_name_once(api: Client) -> None:
    from kubeling.client.pods import pod_bind

    node = core_pb2.Node()
    node.metadata.name = "bind-node"
    await api.nodes.create(node)
    await api.pods.create(make_pod("to-bind"))
    bound = await pod_bind(api, "to-bind", "bind-node")
    assert bound.spec.node_name == "bind-node"
    scheduled = {c.type: c.status for c in bound.status.conditions}
    assert scheduled["PodScheduled"] == "True"
    await expect_code(grpc.StatusCode.FAILED_PRECONDITION, pod_bind(api, "to-bind", "bind-node"))
    await api.pods.create(make_pod("nowhere-to-go"))
    await expect_code(grpc.StatusCode.NOT_FOUND, pod_bind(api, "nowhere-to-go", "no-such-node"))


async def test_orphan_and_foreground_deletion_leave_it_to_the_collector(api: Client) -> None:
    await api.pods.create(make_pod("orphaning"))
    marked = await api.pods.delete("orphaning", "default", propagation_policy="Orphan")
    assert list(marked.metadata.finalizers) == ["orphan"]
    assert marked.metadata.HasField("deletion_timestamp")
    await expect_code(
        grpc.StatusCode.INVALID_ARGUMENT,
        api.pods.delete("orphaning", "default", propagation_policy="Sometimes"),
    )


async def test_a_watch_of_one_node_by_name_hears_only_that_node(api: Client) -> None:
    """As every kubelet watches its Node (an indexed field): the named node's
    changes, its deletion included, and nothing of the other nodes."""
    for name in ("watched-1", "watched-10", "other"):
        await api.nodes.create(core_pb2.Node(metadata={"name": name}))
    events = api.nodes.watch(field_selector="metadata.name=watched-1")
    seen: list[tuple[str, str]] = []
    try:
        while (event := await asyncio.wait_for(anext(events), 5)).type != "BOOKMARK":
            seen.append((event.type, event.object.metadata.name))
        assert seen == [("ADDED", "watched-1")]
        for name in ("watched-10", "other", "watched-1"):
            node = await api.nodes.get(name)
            node.metadata.labels["touched"] = "yes"
            await api.nodes.update(node)
        await api.nodes.delete("watched-10")
        await api.nodes.delete("watched-1")
        for expected in ("MODIFIED", "DELETED"):
            event = await asyncio.wait_for(anext(events), 5)
            while event.type == "BOOKMARK":
                event = await asyncio.wait_for(anext(events), 5)
            assert (event.type, event.object.metadata.name) == (expected, "watched-1")
    finally:
        await events.aclose()
        for name in ("other", "watched-10", "watched-1"):
            with contextlib.suppress(grpc.aio.AioRpcError):
                await api.nodes.delete(name)
