"""hostNetwork pods in the kubelet: their sandbox shares the node's UTS namespace
(no hostname: runc refuses one there) and their address is the node's (the
runtime reports none), so probes, status.podIP and Services find them."""

from __future__ import annotations

from pathlib import Path

from kubeling.kubelet.containers import sandbox_config
from kubeling.kubelet.runtime_state import RuntimePod, SandboxInstance
from kubeling.kubelet.status import StatusInputs, compute_status
from kubeling.v1 import core_pb2, meta_pb2

NODE_IP = "10.99.0.11"


def pod(host_network: bool) -> core_pb2.Pod:
    return core_pb2.Pod(
        metadata=meta_pb2.ObjectMeta(name="p", namespace="kube-system", uid="u1"),
        spec=core_pb2.PodSpec(
            host_network=host_network,
            containers=[core_pb2.Container(name="c", image="busybox")],
        ),
    )


def status_of(spec: core_pb2.Pod, sandbox_ip: str) -> core_pb2.PodStatus:
    runtime = RuntimePod("u1", "kube-system", "p", [SandboxInstance("s1", 0, True, 1, sandbox_ip)])
    inputs = StatusInputs(spec, runtime, NODE_IP, lambda _: False, lambda _: True, lambda _: None)
    return compute_status(inputs)


def test_a_host_network_sandbox_has_no_hostname_of_its_own() -> None:
    config = sandbox_config(pod(True), Path("/tmp/logs"), 0)
    assert config.hostname == ""
    assert config.linux.security_context.namespace_options.network != 0  # NODE
    assert sandbox_config(pod(False), Path("/tmp/logs"), 0).hostname == "p"


def test_a_host_network_pods_ip_is_its_nodes() -> None:
    status = status_of(pod(True), "")
    assert status.pod_ip == NODE_IP and [i.ip for i in status.pod_ips] == [NODE_IP]
    assert status_of(pod(False), "10.244.0.5").pod_ip == "10.244.0.5"
    assert status_of(pod(False), "").pod_ip == ""
