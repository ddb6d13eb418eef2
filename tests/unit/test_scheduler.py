"""Scheduler filters, scores, cache and messages on plain objects (no master)."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from kubeling.scheduler.algorithm import Algorithm, nodes_to_find
from kubeling.scheduler.cache import NodeCache
from kubeling.scheduler.framework import (
    REASON_AFFINITY,
    REASON_NOT_READY,
    REASON_UNSCHEDULABLE,
    NodeStatic,
    PodInfo,
    PortTable,
    failure_message,
    pod_requests,
    resource_scores,
    static_reason,
    tolerates,
)
from kubeling.v1 import core_pb2


def make_node(
    name: str,
    cpu: str = "4",
    memory: str = "8Gi",
    pods: str = "110",
    labels: dict[str, str] | None = None,
    taints: list[tuple[str, str, str]] | None = None,
    ready: bool = True,
    unschedulable: bool = False,
) -> core_pb2.Node:
    node = core_pb2.Node()
    node.metadata.name = name
    node.metadata.labels.update(labels or {})
    node.status.allocatable.update({"cpu": cpu, "memory": memory, "pods": pods})
    node.status.conditions.add(type="Ready", status="True" if ready else "False")
    node.spec.unschedulable = unschedulable
    for key, value, effect in taints or []:
        node.spec.taints.add(key=key, value=value, effect=effect)
    return node


def make_pod(
    name: str,
    cpu: str | None = None,
    memory: str | None = None,
    owner: str = "",
    host_port: int = 0,
) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = "default"
    pod.metadata.uid = f"uid-{name}"
    container = pod.spec.containers.add(name="main", image="busybox")
    if cpu is not None:
        container.resources.requests["cpu"] = cpu
    if memory is not None:
        container.resources.requests["memory"] = memory
    if host_port:
        container.ports.add(container_port=80, host_port=host_port)
    if owner:
        pod.metadata.owner_references.add(kind="ReplicaSet", name=owner, uid=owner, controller=True)
    return pod


def static(node: core_pb2.Node) -> NodeStatic:
    return NodeStatic.of(node)


def cluster(*nodes: core_pb2.Node, percentage: int = 100) -> Algorithm:
    cache = NodeCache()
    for node in nodes:
        cache.upsert_node(node)
    return Algorithm(cache, percentage, seed=1)


def place(algorithm: Algorithm, pod: core_pb2.Pod) -> str:
    info = PodInfo.of(pod)
    result = algorithm.schedule(info)
    assert isinstance(result, str), result
    algorithm.cache.assume(info, result)
    return result


# ------------------------------------------------------------------- requests


def test_requests_sum_containers_and_take_the_largest_init_container() -> None:
    pod = make_pod("p", cpu="250m", memory="64Mi")
    pod.spec.containers.add(name="side", image="x").resources.requests.update({"cpu": "0.25"})
    pod.spec.init_containers.add(name="init", image="x").resources.requests.update(
        {"cpu": "1", "memory": "32Mi"}
    )
    cpu, mem, nz_cpu, nz_mem = pod_requests(pod.spec)
    assert cpu == 1000  # the init container's 1 CPU beats 250m + 250m
    assert mem == 64 * 2**20
    # For scoring, the side container's absent memory counts as 200Mi.
    assert nz_cpu == 1000
    assert nz_mem == 64 * 2**20 + 200 * 2**20


def test_empty_pod_requests_nothing_but_scores_with_defaults() -> None:
    assert pod_requests(make_pod("p").spec) == (0, 0, 100, 200 * 2**20)


# ------------------------------------------------------------------ tolerations


@pytest.mark.parametrize(
    ("toleration", "taint", "expected"),
    [
        (
            core_pb2.Toleration(key="k", operator="Equal", value="v", effect="NoSchedule"),
            ("k", "v", "NoSchedule"),
            True,
        ),
        # An empty effect matches all effects; an empty key with Exists all taints.
        (core_pb2.Toleration(key="k", value="v"), ("k", "v", "NoExecute"), True),
        (core_pb2.Toleration(key="k", value="w"), ("k", "v", "NoSchedule"), False),
        (core_pb2.Toleration(key="k", operator="Exists"), ("k", "anything", "NoSchedule"), True),
        (core_pb2.Toleration(operator="Exists"), ("any", "thing", "NoExecute"), True),
        (
            core_pb2.Toleration(operator="Exists", effect="NoSchedule"),
            ("any", "", "NoExecute"),
            False,
        ),
        (core_pb2.Toleration(key="other", operator="Exists"), ("k", "", "NoSchedule"), False),
        (
            core_pb2.Toleration(key="k", operator="Exists", effect="NoExecute"),
            ("k", "", "NoSchedule"),
            False,
        ),
    ],
)
def test_toleration_matching(
    toleration: core_pb2.Toleration, taint: tuple[str, str, str], expected: bool
) -> None:
    assert tolerates(toleration, *taint) is expected


def test_taints_and_node_conditions_gate_nodes() -> None:
    pod = PodInfo.of(make_pod("p"))
    unreachable = make_node("n", taints=[("node.kubernetes.io/unreachable", "", "NoExecute")])
    assert static_reason(pod, static(unreachable)) == (
        "node(s) had untolerated taint {node.kubernetes.io/unreachable: }"
    )
    soft = make_node("n", taints=[("dedicated", "gpu", "PreferNoSchedule")])
    assert static_reason(pod, static(soft)) is None  # only a preference
    assert static_reason(pod, static(make_node("n", ready=False))) == REASON_NOT_READY
    assert static_reason(pod, static(make_node("n", unschedulable=True))) == REASON_UNSCHEDULABLE

    tolerant = make_pod("d")
    tolerant.spec.tolerations.add(operator="Exists")
    info = PodInfo.of(tolerant)  # a DaemonSet-like pod may use such nodes
    assert static_reason(info, static(unreachable)) is None
    assert static_reason(info, static(make_node("n", ready=False))) is None
    assert static_reason(info, static(make_node("n", unschedulable=True))) is None


# ---------------------------------------------------------------- node affinity


def affinity_pod(*terms: core_pb2.NodeSelectorTerm) -> PodInfo:
    pod = make_pod("p")
    required = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    required.node_selector_terms.extend(terms)
    return PodInfo.of(pod)


def expr(key: str, operator: str, *values: str) -> core_pb2.NodeSelectorTerm:
    return core_pb2.NodeSelectorTerm(
        match_expressions=[
            core_pb2.NodeSelectorRequirement(key=key, operator=operator, values=values)
        ]
    )


@pytest.mark.parametrize(
    ("term", "matches"),
    [
        (expr("zone", "In", "a", "b"), True),
        (expr("zone", "In", "c"), False),
        (expr("zone", "NotIn", "c"), True),
        (expr("missing", "NotIn", "c"), True),
        (expr("zone", "Exists"), True),
        (expr("missing", "Exists"), False),
        (expr("missing", "DoesNotExist"), True),
        (expr("zone", "DoesNotExist"), False),
        (expr("cores", "Gt", "8"), True),
        (expr("cores", "Gt", "16"), False),
        (expr("cores", "Lt", "32"), True),
        (expr("zone", "Gt", "1"), False),  # not a number: no match
        (core_pb2.NodeSelectorTerm(), False),  # an empty term selects nothing
        (
            core_pb2.NodeSelectorTerm(
                match_fields=[
                    core_pb2.NodeSelectorRequirement(
                        key="metadata.name", operator="In", values=["node-a"]
                    )
                ]
            ),
            True,
        ),
        (
            core_pb2.NodeSelectorTerm(
                match_fields=[
                    core_pb2.NodeSelectorRequirement(
                        key="metadata.name", operator="NotIn", values=["node-a"]
                    )
                ]
            ),
            False,
        ),
    ],
)
def test_required_node_affinity_operators(term: core_pb2.NodeSelectorTerm, matches: bool) -> None:
    node = static(make_node("node-a", labels={"zone": "a", "cores": "16"}))
    assert (static_reason(affinity_pod(term), node) is None) is matches


def test_affinity_terms_are_ored_and_expressions_anded() -> None:
    node = static(make_node("node-a", labels={"zone": "a", "disk": "ssd"}))
    both = core_pb2.NodeSelectorTerm(
        match_expressions=[
            *expr("zone", "In", "a").match_expressions,
            *expr("disk", "In", "hdd").match_expressions,
        ]
    )
    assert static_reason(affinity_pod(both), node) == REASON_AFFINITY
    assert static_reason(affinity_pod(both, expr("disk", "In", "ssd")), node) is None


def test_node_selector_must_match_all_labels() -> None:
    pod = make_pod("p")
    pod.spec.node_selector.update({"zone": "a", "disk": "ssd"})
    info = PodInfo.of(pod)
    assert static_reason(info, static(make_node("n", labels={"zone": "a", "disk": "ssd"}))) is None
    assert static_reason(info, static(make_node("n", labels={"zone": "a"}))) == REASON_AFFINITY


# --------------------------------------------------------------- ports, scores


def test_host_port_conflicts_respect_ips_and_protocols() -> None:
    table = PortTable()
    table.add([("10.0.0.1", "TCP", 80)])
    assert table.conflicts([("10.0.0.1", "TCP", 80)])
    assert table.conflicts([("0.0.0.0", "TCP", 80)])  # wildcard overlaps every IP
    assert not table.conflicts([("10.0.0.2", "TCP", 80)])
    assert not table.conflicts([("10.0.0.1", "UDP", 80)])
    table.add([("0.0.0.0", "UDP", 53)])
    assert table.conflicts([("10.0.0.9", "UDP", 53)])
    table.add([("10.0.0.1", "TCP", 80), ("0.0.0.0", "UDP", 53)], -1)
    assert not table and not table.conflicts([("0.0.0.0", "TCP", 80)])


def test_resource_scores_prefer_free_and_balanced_nodes() -> None:
    least_empty, balanced_empty = resource_scores(4000, 4 * 2**30, 0, 0)
    assert (least_empty, balanced_empty) == (100.0, 100.0)
    least_half, balanced_skewed = resource_scores(4000, 4 * 2**30, 2000, 0)
    assert least_half == 75.0 and balanced_skewed == 75.0
    assert resource_scores(4000, 4 * 2**30, 2000, 2 * 2**30) == (50.0, 100.0)


def test_failure_message_reads_like_kubernetes() -> None:
    message = failure_message(
        3, Counter({"Insufficient cpu": 2, "node(s) had untolerated taint {a: }": 1})
    )
    assert message == (
        "0/3 nodes are available: 1 node(s) had untolerated taint {a: }, 2 Insufficient cpu."
    )
    assert failure_message(0, Counter()) == "no nodes available to schedule pods"


# ---------------------------------------------------------------- algorithm


def test_replicas_of_one_owner_spread_evenly() -> None:
    algorithm = cluster(make_node("n1"), make_node("n2"), make_node("n3"))
    placed = Counter(place(algorithm, make_pod(f"web-{i}", owner="rs-1")) for i in range(6))
    assert placed == Counter({"n1": 2, "n2": 2, "n3": 2})


def test_requested_resources_steer_pods_to_the_emptier_node() -> None:
    algorithm = cluster(make_node("big", cpu="8"), make_node("small", cpu="2"))
    assert place(algorithm, make_pod("a", cpu="1", memory="1Gi")) == "big"


def test_unschedulable_pod_gets_a_histogram_of_reasons() -> None:
    algorithm = cluster(
        make_node("n1", cpu="1"),
        make_node("n2", cpu="1"),
        make_node("n3", taints=[("node.kubernetes.io/unreachable", "", "NoExecute")]),
    )
    result = algorithm.schedule(PodInfo.of(make_pod("big", cpu="2")))
    assert result == (
        None,
        "0/3 nodes are available: 1 node(s) had untolerated taint "
        "{node.kubernetes.io/unreachable: }, 2 Insufficient cpu.",
    )


def test_assumed_pods_count_until_forgotten_and_are_not_double_counted() -> None:
    algorithm = cluster(make_node("n1", cpu="1", pods="2"))
    cache = algorithm.cache
    first = make_pod("a", cpu="600m")
    place(algorithm, first)
    result = algorithm.schedule(PodInfo.of(make_pod("b", cpu="600m")))
    assert result == (None, "0/1 nodes are available: 1 Insufficient cpu.")
    # The watch confirms the assumption: still counted once.
    first.spec.node_name = "n1"
    cache.observe_pod(first)
    assert cache.req_cpu[0] == 600 and cache.pod_count[0] == 1
    cache.forget("default/a", "uid-a")  # confirmed pods are not forgotten
    assert cache.req_cpu[0] == 600
    assert cache.remove_pod("default/a") and cache.req_cpu[0] == 0
    # An assumption whose bind failed goes away.
    place(algorithm, make_pod("c", cpu="600m"))
    cache.forget("default/c", "uid-c")
    assert cache.req_cpu[0] == 0 and cache.pod_count[0] == 0


def test_pod_count_and_host_ports_limit_nodes() -> None:
    algorithm = cluster(make_node("n1", pods="1"), make_node("n2"))
    assert place(algorithm, make_pod("a", host_port=8080)) in ("n1", "n2")
    second = algorithm.schedule(PodInfo.of(make_pod("b", host_port=8080)))
    assert isinstance(second, str)
    algorithm.cache.assume(PodInfo.of(make_pod("b", host_port=8080)), second)
    reasons = algorithm.schedule(PodInfo.of(make_pod("c", host_port=8080)))
    assert reasons == (
        None,
        "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports.",
    )


def test_finished_pods_free_their_node() -> None:
    algorithm = cluster(make_node("n1", cpu="1"))
    pod = make_pod("job", cpu="1")
    pod.spec.node_name = "n1"
    algorithm.cache.observe_pod(pod)
    assert isinstance(algorithm.schedule(PodInfo.of(make_pod("x", cpu="1"))), tuple)
    pod.status.phase = "Succeeded"
    assert algorithm.cache.observe_pod(pod)
    assert algorithm.schedule(PodInfo.of(make_pod("x", cpu="1"))) == "n1"


def test_node_changes_invalidate_static_results() -> None:
    algorithm = cluster(make_node("n1", ready=False))
    assert algorithm.schedule(PodInfo.of(make_pod("a"))) == (
        None,
        f"0/1 nodes are available: 1 {REASON_NOT_READY}.",
    )
    assert algorithm.cache.upsert_node(make_node("n1"))
    assert not algorithm.cache.upsert_node(make_node("n1"))  # a heartbeat: nothing new
    assert algorithm.schedule(PodInfo.of(make_pod("a"))) == "n1"


def test_sampling_sizes_follow_percentage_of_nodes_to_score() -> None:
    assert nodes_to_find(50, 5) == 50
    assert nodes_to_find(1000, 5) == 100
    assert nodes_to_find(5000, 5) == 250
    assert nodes_to_find(5000, 0) == 500  # Kubernetes' adaptive 10% at 5000
    assert nodes_to_find(5000, 100) == 5000


def test_sampling_rotates_over_all_nodes() -> None:
    nodes = [make_node(f"n{i:04d}") for i in range(400)]
    algorithm = cluster(*nodes, percentage=5)  # 100 feasible nodes per decision
    chosen = {place(algorithm, make_pod(f"p{i}")) for i in range(8)}
    starts = {int(name[1:]) // 100 for name in chosen}
    assert starts == {0, 1, 2, 3}  # every quarter of the cluster got its turn


def test_five_thousand_nodes_decide_fast() -> None:
    nodes = [make_node(f"n{i}", cpu="8", memory="32Gi") for i in range(5000)]
    algorithm = cluster(*nodes, percentage=5)
    pods = [
        make_pod(f"p{i}", cpu="100m", memory="128Mi", owner=f"rs-{i % 10}") for i in range(2000)
    ]
    started = time.perf_counter()
    for pod in pods:
        place(algorithm, pod)
    elapsed = time.perf_counter() - started
    assert sum(algorithm.cache.pod_count) == 2000
    # ~0.2 ms per pod on a laptop; the bound leaves room for slow CI machines.
    assert elapsed < 8.0, f"{2000 / elapsed:.0f} pods/s"
