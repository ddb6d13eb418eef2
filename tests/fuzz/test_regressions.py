"""Regression tests for what hostile-input work found or bounded (one per finding)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from kubeling.api import kinds
from kubeling.cri.runtime import ExecResult
from kubeling.kubelet.directory import ContainerRef
from kubeling.kubelet.server import MAX_EXEC_TIMEOUT, KubeletService
from kubeling.master.defaults import apply_defaults
from kubeling.master.validation import validate
from kubeling.master.validation.core import MAX_GRACE_PERIOD_SECONDS
from kubeling.v1 import core_pb2, meta_pb2
from tests.fuzz.cluster import FuzzCluster


class OnePod:
    node_name = "node-1"

    def __init__(self) -> None:
        self.pod = core_pb2.Pod()
        self.pod.metadata.name = "web"
        self.pod.metadata.namespace = "default"
        self.pod.spec.containers.add(name="app")

    def pods(self) -> list[core_pb2.Pod]:
        return [self.pod]

    def find_pod(self, namespace: str, name: str) -> core_pb2.Pod | None:
        return self.pod if (namespace, name) == ("default", "web") else None

    def find_container(self, *args: Any, **kwargs: Any) -> ContainerRef:
        return ContainerRef("c1", "app", "/dev/null", running=True)


class RecordingRuntime:
    def __init__(self) -> None:
        self.timeouts: list[int] = []

    async def exec_sync(self, container_id: str, cmd: Any, timeout_seconds: int) -> ExecResult:
        self.timeouts.append(timeout_seconds)
        return ExecResult(b"", b"", 0)


@pytest.mark.parametrize(
    ("asked", "used"),
    [(0, MAX_EXEC_TIMEOUT), (5, 5), (MAX_EXEC_TIMEOUT + 1, MAX_EXEC_TIMEOUT), (2**31 - 1, 600)],
)
async def test_exec_timeout_is_honoured_and_capped(asked: int, used: int) -> None:
    runtime = RecordingRuntime()
    service = KubeletService(OnePod(), runtime)  # type: ignore[arg-type]
    request = core_pb2.PodExecRequest(name="web", command=["true"], timeout_seconds=asked)
    await service.exec(request, None)
    assert runtime.timeouts == [used]


def test_a_request_over_16_mib_is_refused_and_the_master_carries_on(
    fuzz_cluster: FuzzCluster,
) -> None:
    with fuzz_cluster.channel("master") as channel:
        get = channel.unary_unary("/kubeling.v1.Namespaces/Get")
        with pytest.raises(grpc.RpcError) as refused:
            get(b"\x12" + b"\xff\xff\xff\x08" + b"a" * (17 * 1024 * 1024), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reply = get(meta_pb2.GetRequest(name="default").SerializeToString(), timeout=10)
        assert core_pb2.Namespace.FromString(reply).metadata.name == "default"


# Found by the fuzz suite: Pods/Delete of a bound pod with grace_period_seconds near
# 2**63 overflowed the deletion Timestamp (INTERNAL); a Pod whose spec asked for such
# a grace period did the same on a plain Delete. Both are now INVALID_ARGUMENT.
@pytest.mark.parametrize("grace", [2**63 - 1, MAX_GRACE_PERIOD_SECONDS + 1])
def test_a_grace_period_beyond_a_valid_timestamp_is_refused(
    fuzz_cluster: FuzzCluster, grace: int
) -> None:
    fuzz_cluster.reseed_sync()  # the pod "web", bound to node-1
    before = fuzz_cluster.revision
    with fuzz_cluster.channel("master") as channel:
        delete = channel.unary_unary("/kubeling.v1.Pods/Delete")
        request = meta_pb2.DeleteRequest(
            namespace="default", name="web", grace_period_seconds=grace
        )
        with pytest.raises(grpc.RpcError) as refused:
            delete(request.SerializeToString(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "grace_period_seconds: must be no more than" in refused.value.details()
    assert fuzz_cluster.revision == before


def test_a_pod_asking_for_a_grace_period_beyond_a_valid_timestamp_is_invalid() -> None:
    pod = core_pb2.Pod()
    pod.metadata.name = "slow"
    pod.metadata.namespace = "default"
    pod.spec.containers.add(name="app", image="busybox")
    pod.spec.termination_grace_period_seconds = 2**62
    apply_defaults(kinds.POD, pod)
    assert [v.field for v in validate(kinds.POD, pod)] == ["spec.terminationGracePeriodSeconds"]
    pod.spec.termination_grace_period_seconds = MAX_GRACE_PERIOD_SECONDS
    assert validate(kinds.POD, pod) == []
