"""Turn a Pod's spec into CRI sandbox and container configs: labels, the
environment (plain, downward API, ConfigMaps and Secrets), resources, mounts and
the security context."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

from kubeling.api.quantity import as_int_bytes, cpu_millis, parse_quantity
from kubeling.cri.api import pb
from kubeling.kubelet import labels
from kubeling.kubelet.downward import DownwardError, field_value, resource_value
from kubeling.kubelet.volumes import ObjectSource
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
        log_directory=str(pod_log_directory(log_root, pod)),
    )
    if not pod.spec.host_network:
        # A hostNetwork pod shares the node's UTS namespace too (containerd gives it
        # no private one, and runc refuses to set a hostname there): no hostname, as
        # Kubernetes' kubelet.
        config.hostname = pod.spec.hostname or meta.name
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
    every = [*pod.spec.containers, *pod.spec.init_containers]
    if any(c.security_context.privileged for c in every):
        # containerd runs a privileged container only in a privileged sandbox.
        config.linux.security_context.privileged = True
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
    *,
    env: list[tuple[str, str]] | None = None,
    mounts: list[pb.Mount] | None = None,
) -> pb.ContainerConfig:
    """`env`: the resolved environment (`resolve_environment`); None: the
    container's plain and fieldRef vars only. `$(VAR)` in command and args names
    a variable of that environment, as in Kubernetes. Raises ContainerConfigError
    for a securityContext the kubelet must refuse."""
    meta = pod.metadata
    if env is None:
        env = environment(pod, container, pod_ip, host_ip)
    variables = dict(env)
    config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=container.name, attempt=attempt),
        image=pb.ImageSpec(image=image_ref),
        command=[expand(part, variables) for part in container.command],
        args=[expand(part, variables) for part in container.args],
        working_dir=container.working_dir,
        log_path=f"{container.name}/{attempt}.log",
        mounts=mounts or [],
        # What `kubeling attach -i/-t` joins: an open stdin, a terminal.
        stdin=container.stdin,
        stdin_once=container.stdin_once,
        tty=container.tty,
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
    for name, value in env:
        config.envs.add(key=name, value=value)
    _resources(container, config.linux.resources)
    security_context(pod, container, config.linux.security_context)
    return config


class ContainerConfigError(Exception):
    """The container cannot be configured yet (CreateContainerConfigError): a
    ConfigMap, Secret or key it needs is missing, or a policy refuses it."""


def security_context(
    pod: core_pb2.Pod, container: core_pb2.Container, out: pb.LinuxContainerSecurityContext
) -> None:
    """The pod's and the container's securityContext (the container's wins)."""
    pod_sc, sc = pod.spec.security_context, container.security_context
    if sc.HasField("run_as_user"):
        out.run_as_user.value = sc.run_as_user
    elif pod_sc.HasField("run_as_user"):
        out.run_as_user.value = pod_sc.run_as_user
    if sc.HasField("run_as_group"):
        out.run_as_group.value = sc.run_as_group
    elif pod_sc.HasField("run_as_group"):
        out.run_as_group.value = pod_sc.run_as_group
    non_root = sc.run_as_non_root if sc.HasField("run_as_non_root") else pod_sc.run_as_non_root
    if non_root and out.HasField("run_as_user") and out.run_as_user.value == 0:
        raise ContainerConfigError("container's runAsUser breaks non-root policy")
    groups = list(pod_sc.supplemental_groups)
    if pod_sc.HasField("fs_group"):
        groups.insert(0, pod_sc.fs_group)  # volumes' group: the processes are members
    out.supplemental_groups.extend(dict.fromkeys(groups))
    out.readonly_rootfs = sc.read_only_root_filesystem
    out.privileged = sc.privileged
    if sc.HasField("allow_privilege_escalation") and not sc.allow_privilege_escalation:
        out.no_new_privs = True
    if sc.HasField("capabilities"):
        out.capabilities.add_capabilities.extend(c.upper() for c in sc.capabilities.add)
        out.capabilities.drop_capabilities.extend(c.upper() for c in sc.capabilities.drop)
    if pod.spec.host_network:
        out.namespace_options.network = pb.NODE


def environment(
    pod: core_pb2.Pod, container: core_pb2.Container, pod_ip: str, host_ip: str
) -> list[tuple[str, str]]:
    """Env vars with `$(VAR)` references expanded and downward-API fields filled
    (no ConfigMaps or Secrets: see `resolve_environment`)."""
    resolved: dict[str, str] = {}
    result: list[tuple[str, str]] = []
    for env in container.env:
        value = _env_value(pod, container, env, resolved, pod_ip, host_ip)
        if value is None:
            continue
        resolved[env.name] = value
        result.append((env.name, value))
    return result


def _env_value(
    pod: core_pb2.Pod,
    container: core_pb2.Container,
    env: core_pb2.EnvVar,
    resolved: dict[str, str],
    pod_ip: str,
    host_ip: str,
) -> str | None:
    """A plain, fieldRef or resourceFieldRef value; None for a ConfigMap or Secret ref."""
    if not env.HasField("value_from"):
        return expand(env.value, resolved)
    source = env.value_from
    if source.HasField("field_ref"):
        try:
            return field_value(pod, source.field_ref.field_path, pod_ip, host_ip)
        except DownwardError as exc:
            raise ContainerConfigError(str(exc)) from None
    if source.HasField("resource_field_ref"):
        ref = source.resource_field_ref
        try:
            return resource_value(
                pod, ref.container_name or container.name, ref.resource, ref.divisor
            )
        except DownwardError as exc:
            raise ContainerConfigError(str(exc)) from None
    return None


_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


async def resolve_environment(
    objects: ObjectSource | None,
    pod: core_pb2.Pod,
    container: core_pb2.Container,
    pod_ip: str,
    host_ip: str,
) -> tuple[list[tuple[str, str]], list[str]]:
    """The container's environment as the kubelet makes it: every envFrom source's
    keys (prefixed; invalid names skipped, each source's skip is a warning), then
    `env` in order (a later name replaces an earlier one). A missing ConfigMap,
    Secret or key that is not optional raises ContainerConfigError naming it."""
    namespace = pod.metadata.namespace
    values: dict[str, str] = {}
    warnings: list[str] = []
    maps: dict[str, dict[str, str] | None] = {}
    secrets: dict[str, dict[str, str] | None] = {}

    async def config_map(name: str) -> dict[str, str] | None:
        if name not in maps:
            found = await _source(objects).config_map(namespace, name)
            maps[name] = None if found is None else _config_map_data(found)
        return maps[name]

    async def secret(name: str) -> dict[str, str] | None:
        if name not in secrets:
            found = await _source(objects).secret(namespace, name)
            secrets[name] = None if found is None else _secret_data(found)
        return secrets[name]

    for source in container.env_from:
        if source.HasField("config_map_ref"):
            what, name, optional = (
                "configMap",
                source.config_map_ref.name,
                source.config_map_ref.optional,
            )
            data = await config_map(name)
        else:
            what, name, optional = "secret", source.secret_ref.name, source.secret_ref.optional
            data = await secret(name)
        if data is None and not optional:
            raise ContainerConfigError(f'{what.lower()} "{name}" not found')
        invalid: list[str] = []
        for key, text in sorted((data or {}).items()):
            variable = source.prefix + key
            if not _ENV_NAME.match(variable):
                invalid.append(key)
                continue
            values[variable] = text
        if invalid:
            warnings.append(
                f"Keys [{', '.join(invalid)}] from the EnvFrom {what} {namespace}/{name} "
                "were skipped since they are considered invalid environment variable names."
            )
    for env in container.env:
        value: str | None = _env_value(pod, container, env, values, pod_ip, host_ip)
        if value is None:
            source2 = env.value_from
            if source2.HasField("config_map_key_ref"):
                key_ref = source2.config_map_key_ref
                value = _key(
                    await config_map(key_ref.name),
                    key_ref.key,
                    key_ref.optional,
                    f"ConfigMap {namespace}/{key_ref.name}",
                    f'configmap "{key_ref.name}" not found',
                )
            else:
                secret_ref = source2.secret_key_ref
                value = _key(
                    await secret(secret_ref.name),
                    secret_ref.key,
                    secret_ref.optional,
                    f"Secret {namespace}/{secret_ref.name}",
                    f'secret "{secret_ref.name}" not found',
                )
            if value is None:
                continue  # optional and absent: no variable
        values.pop(env.name, None)  # keep the order: a redefined name moves last
        values[env.name] = value
    return list(values.items()), warnings


def _source(objects: ObjectSource | None) -> ObjectSource:
    if objects is None:
        raise ContainerConfigError("this kubelet reads no ConfigMaps or Secrets")
    return objects


def _config_map_data(found: core_pb2.ConfigMap) -> dict[str, str]:
    data = dict(found.data)
    for key, raw in found.binary_data.items():
        data[key] = raw.decode(errors="replace")
    return data


def _secret_data(found: core_pb2.Secret) -> dict[str, str]:
    return {key: raw.decode(errors="replace") for key, raw in found.data.items()}


def _key(
    data: dict[str, str] | None, key: str, optional: bool, where: str, missing: str
) -> str | None:
    if data is None:
        if optional:
            return None
        raise ContainerConfigError(missing)
    if key not in data:
        if optional:
            return None
        raise ContainerConfigError(f"couldn't find key {key} in {where}")
    return data[key]


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
