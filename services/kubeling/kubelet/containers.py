"""Turn a Pod's spec into CRI sandbox and container configs."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from kubeling.api.quantity import as_int_bytes, cpu_millis, parse_quantity
from kubeling.cri.api import pb
from kubeling.kubelet import labels
from kubeling.v1 import core_pb2

# CFS settings as the kubelet computes them from millicores.
_CPU_PERIOD = 100_000
_MIN_SHARES = 2
_SHARES_PER_CPU = 1024


def pod_log_directory(root: Path, pod: core_pb2.Pod) -> Path:
    meta = pod.metadata
    return root / f"{meta.namespace}_{meta.name}_{meta.uid}"


def sandbox_config(
    pod: core_pb2.Pod, log_root: Path, attempt: int, dns: pb.DNSConfig | None = None
) -> pb.PodSandboxConfig:
    """`dns`: the pod's resolv.conf (kubelet/dns.py); None leaves the runtime's default."""
    meta = pod.metadata
    config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(
            name=meta.name, uid=meta.uid, namespace=meta.namespace, attempt=attempt
        ),
        hostname=pod.spec.hostname or meta.name,
        log_directory=str(pod_log_directory(log_root, pod)),
    )
    if dns is not None:
        config.dns_config.CopyFrom(dns)
    config.labels.update(dict(meta.labels))
    config.labels.update(
        {
            labels.POD_NAME: meta.name,
            labels.POD_NAMESPACE: meta.namespace,
            labels.POD_UID: meta.uid,
            labels.MANAGED_BY: labels.MANAGER,
        }
    )
    config.annotations.update(dict(meta.annotations))
    for container in pod.spec.containers:
        for port in container.ports:
            if port.host_port:
                config.port_mappings.add(
                    protocol=_protocol(port.protocol),
                    container_port=port.container_port,
                    host_port=port.host_port,
                    host_ip=port.host_ip,
                )
    if pod.spec.host_network:
        config.linux.security_context.namespace_options.network = pb.NODE
    return config


def _protocol(name: str) -> pb.Protocol.ValueType:
    return {"UDP": pb.UDP, "SCTP": pb.SCTP}.get(name, pb.TCP)


def container_hash(container: core_pb2.Container) -> str:
    """Changes when the container's spec changes (e.g. a new image): the kubelet
    then replaces the running container, as Kubernetes does."""
    return hashlib.sha256(container.SerializeToString(deterministic=True)).hexdigest()[:16]


def container_config(
    pod: core_pb2.Pod,
    container: core_pb2.Container,
    attempt: int,
    image_ref: str,
    pod_ip: str,
    host_ip: str,
    init: bool = False,
) -> pb.ContainerConfig:
    meta = pod.metadata
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=container.name, attempt=attempt),
        image=pb.ImageSpec(image=image_ref),
        command=list(container.command),
        args=list(container.args),
        working_dir=container.working_dir,
        log_path=f"{container.name}/{attempt}.log",
    )
    config.labels.update(
        {
            labels.POD_NAME: meta.name,
            labels.POD_NAMESPACE: meta.namespace,
            labels.POD_UID: meta.uid,
            labels.CONTAINER_NAME: container.name,
            labels.MANAGED_BY: labels.MANAGER,
        }
    )
    config.annotations.update(
        {labels.CONTAINER_HASH: container_hash(container), labels.RESTART_COUNT: str(attempt)}
    )
    if init:
        config.annotations[labels.INIT_CONTAINER] = "true"
    for name, value in environment(pod, container, pod_ip, host_ip):
        config.envs.add(key=name, value=value)
    _resources(container, config.linux.resources)
    return config


def environment(
    pod: core_pb2.Pod, container: core_pb2.Container, pod_ip: str, host_ip: str
) -> list[tuple[str, str]]:
    """Env vars with `$(VAR)` references expanded and downward-API fields filled."""
    fields = {
        "metadata.name": pod.metadata.name,
        "metadata.namespace": pod.metadata.namespace,
        "metadata.uid": pod.metadata.uid,
        "spec.nodeName": pod.spec.node_name,
        "status.podIP": pod_ip,
        "status.hostIP": host_ip,
    }
    resolved: dict[str, str] = {}
    result: list[tuple[str, str]] = []
    for env in container.env:
        if env.HasField("value_from") and env.value_from.HasField("field_ref"):
            value = fields.get(env.value_from.field_ref.field_path, "")
        else:
            value = expand(env.value, resolved)
        resolved[env.name] = value
        result.append((env.name, value))
    return result


def expand(text: str, variables: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$` escapes."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and (end := text.find(")", i)) != -1:
            name = text[i + 2 : end]
            out.append(variables.get(name, text[i : end + 1]))
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _resources(container: core_pb2.Container, out: pb.LinuxContainerResources) -> None:
    requests, limits = container.resources.requests, container.resources.limits
    cpu_request = requests.get("cpu") or limits.get("cpu")
    if cpu_request:
        millis = cpu_millis(parse_quantity(cpu_request))
        out.cpu_shares = max(_MIN_SHARES, millis * _SHARES_PER_CPU // 1000)
    else:
        out.cpu_shares = _MIN_SHARES
    if limits.get("cpu"):
        millis = cpu_millis(parse_quantity(limits["cpu"]))
        out.cpu_period = _CPU_PERIOD
        out.cpu_quota = max(1000, math.ceil(millis * _CPU_PERIOD / 1000))
    if limits.get("memory"):
        out.memory_limit_in_bytes = as_int_bytes(parse_quantity(limits["memory"]))
