"""Server-side defaulting: fill in what Kubernetes fills in before validation.

Defaults run on every create and update, before validation, so they must be
idempotent and must never overwrite a value the user chose. They follow the
Kubernetes v1 / apps/v1 defaulting functions for the fields kubeling supports.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from fractions import Fraction
from typing import cast

from google.protobuf.message import Message

from kubeling.api.kinds import Kind
from kubeling.api.quantity import QuantityError, parse_quantity
from kubeling.v1 import apps_pb2, batch_pb2, core_pb2, discovery_pb2, storage_pb2

__all__ = ["apply_defaults", "default_job_spec", "default_pod_spec", "image_tag", "qos_class"]

DEFAULT_SCHEDULER_NAME = "default-scheduler"
DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS = 30
DEFAULT_CLIENT_IP_TIMEOUT_SECONDS = 10800  # three hours, as Kubernetes
DEFAULT_REVISION_HISTORY_LIMIT = 10
DEFAULT_PROGRESS_DEADLINE_SECONDS = 600
NAMESPACE_FINALIZER = "kubernetes"
DEFAULT_DNS_POLICY = "ClusterFirst"
DEFAULT_VOLUME_MODE = 0o644
DEFAULT_SECRET_TYPE = "Opaque"
DEFAULT_BACKOFF_LIMIT = 6
DEFAULT_SUCCESSFUL_JOBS_HISTORY_LIMIT = 3
DEFAULT_FAILED_JOBS_HISTORY_LIMIT = 1

# QoS only looks at the compute resources the kubelet enforces with cgroups.
_QOS_RESOURCES = ("cpu", "memory")


def apply_defaults(kind: Kind, obj: Message) -> None:
    """Fill in defaulted fields of `obj` (a `kind.message`) in place."""
    if not isinstance(obj, kind.message):
        raise TypeError(f"expected a {kind.name}, got {type(obj).__name__}")
    handler = _HANDLERS.get(kind.message)
    if handler is not None:  # Node and Lease have nothing to default
        handler(obj)


# ---------------------------------------------------------------------- Pods


def image_tag(image: str) -> str:
    """The tag of an image reference, "latest" when it has neither tag nor digest.

    A digest pins the content, so a digest-only reference has no tag at all (and
    is therefore not pulled on every start).
    """
    name, _, digest = image.partition("@")
    # The tag is after the last ':' of the last path component; a ':' earlier
    # belongs to a registry port ("localhost:5000/app").
    last = name.rsplit("/", 1)[-1]
    _, colon, tag = last.rpartition(":")
    if colon:
        return tag
    return "" if digest else "latest"


def _default_probe(probe: core_pb2.Probe) -> None:
    if probe.timeout_seconds == 0:
        probe.timeout_seconds = 1
    if probe.period_seconds == 0:
        probe.period_seconds = 10
    if probe.success_threshold == 0:
        probe.success_threshold = 1
    if probe.failure_threshold == 0:
        probe.failure_threshold = 3
    if probe.HasField("http_get"):
        if not probe.http_get.path:
            probe.http_get.path = "/"
        if not probe.http_get.scheme:
            probe.http_get.scheme = "HTTP"


def _default_container(container: core_pb2.Container, *, is_pod: bool) -> None:
    if not container.image_pull_policy:
        # A moving tag must be re-pulled to pick up new content; a fixed one need not.
        latest = bool(container.image) and image_tag(container.image) == "latest"
        container.image_pull_policy = "Always" if latest else "IfNotPresent"
    for port in container.ports:
        if not port.protocol:
            port.protocol = "TCP"
    for probe_field in ("liveness_probe", "readiness_probe", "startup_probe"):
        if container.HasField(probe_field):
            _default_probe(getattr(container, probe_field))
    if is_pod:
        # Kubernetes does this for Pods only, not templates: a template change
        # would otherwise be reported for a value the user never wrote.
        resources = container.resources
        for name, limit in resources.limits.items():
            if name not in resources.requests:
                resources.requests[name] = limit


def default_pod_spec(spec: core_pb2.PodSpec, *, is_pod: bool = True) -> None:
    """Defaults shared by Pods and the pod templates of workload controllers."""
    if not spec.restart_policy:
        spec.restart_policy = "Always"
    if not spec.HasField("termination_grace_period_seconds"):
        spec.termination_grace_period_seconds = DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS
    if not spec.scheduler_name:
        spec.scheduler_name = DEFAULT_SCHEDULER_NAME
    if is_pod and not spec.dns_policy:
        # Pods only: a template defaulted here would change the pod-template hash
        # of every Deployment and DaemonSet stored before the field existed, and
        # roll their pods at their next update. Pods made from it get it anyway.
        spec.dns_policy = DEFAULT_DNS_POLICY
    for volume in spec.volumes:
        _default_volume(volume)
    for container in (*spec.init_containers, *spec.containers):
        _default_container(container, is_pod=is_pod)


def _default_volume(volume: core_pb2.Volume) -> None:
    # Files of configMap, secret, downwardAPI and projected volumes get 0644
    # unless the volume says otherwise; items without a mode take the volume's.
    for field in ("config_map", "secret", "downward_api", "projected"):
        if volume.HasField(field):
            source = getattr(volume, field)
            if not source.HasField("default_mode"):
                source.default_mode = DEFAULT_VOLUME_MODE
    for item in volume.downward_api.items:
        if item.HasField("field_ref") and not item.field_ref.api_version:
            item.field_ref.api_version = "v1"
    for projection in volume.projected.sources:
        for item in projection.downward_api.items:
            if item.HasField("field_ref") and not item.field_ref.api_version:
                item.field_ref.api_version = "v1"


# Cached: the same few quantities appear in every pod, and Fraction comparisons
# are slow enough to show in the create path's profile.
@functools.lru_cache(maxsize=1024)
def _positive_quantity(text: str) -> Fraction | None:
    try:
        value = parse_quantity(text)
    except QuantityError:
        return None  # validation reports it; QoS just ignores it
    return value if value > 0 else None


def qos_class(spec: core_pb2.PodSpec) -> str:
    """The pod's QoS class, computed over all containers as Kubernetes does.

    Guaranteed: every container limits both cpu and memory and the summed
    requests equal the summed limits. BestEffort: no cpu/memory request or
    limit anywhere. Everything else is Burstable.
    """
    any_set = False
    guaranteed = True
    requests: dict[str, Fraction] = {}
    limits: dict[str, Fraction] = {}
    for container in (*spec.containers, *spec.init_containers):
        resources = container.resources
        for name in _QOS_RESOURCES:
            request = _positive_quantity(resources.requests.get(name, "0"))
            limit = _positive_quantity(resources.limits.get(name, "0"))
            if request is not None or limit is not None:
                any_set = True
            if limit is None:
                guaranteed = False
            # Sums only matter while the pod can still be Guaranteed.
            if guaranteed:
                assert limit is not None
                limits[name] = limits.get(name, _ZERO) + limit
                if request is not None:
                    requests[name] = requests.get(name, _ZERO) + request
    if not any_set:
        return "BestEffort"
    if guaranteed and requests == limits:
        return "Guaranteed"
    return "Burstable"


_ZERO = Fraction(0)


def _pod(obj: Message) -> None:
    pod = cast(core_pb2.Pod, obj)
    default_pod_spec(pod.spec, is_pod=True)
    # Derived from the (defaulted) spec, which cannot change resources after
    # creation, so recomputing on every write gives the same answer.
    pod.status.qos_class = qos_class(pod.spec)


def _template(template: core_pb2.PodTemplateSpec) -> None:
    default_pod_spec(template.spec, is_pod=False)


# ------------------------------------------------------------------ Services


def _service(obj: Message) -> None:
    spec = cast(core_pb2.Service, obj).spec
    if not spec.type:
        spec.type = "ClusterIP"
    if not spec.session_affinity:
        spec.session_affinity = "None"
    if spec.session_affinity == "ClientIP":
        client_ip = spec.session_affinity_config.client_ip
        if not client_ip.HasField("timeout_seconds"):
            client_ip.timeout_seconds = DEFAULT_CLIENT_IP_TIMEOUT_SECONDS
    for port in spec.ports:
        if not port.protocol:
            port.protocol = "TCP"
        target = port.target_port
        kind = target.WhichOneof("kind")
        # 0 and "" mean "not given" for an IntOrString, as in Kubernetes.
        unset = (
            kind is None
            or (kind == "number_value" and target.number_value == 0)
            or (kind == "string_value" and not target.string_value)
        )
        if unset:
            target.number_value = port.port
    if not spec.internal_traffic_policy and spec.type != "ExternalName":
        spec.internal_traffic_policy = "Cluster"
    if spec.type in ("NodePort", "LoadBalancer") and not spec.external_traffic_policy:
        spec.external_traffic_policy = "Cluster"


def _endpoint_slice(obj: Message) -> None:
    for port in cast(discovery_pb2.EndpointSlice, obj).ports:
        if not port.protocol:
            port.protocol = "TCP"


# ----------------------------------------------------------------- Workloads


def _replica_set(obj: Message) -> None:
    spec = cast(apps_pb2.ReplicaSet, obj).spec
    if not spec.HasField("replicas"):
        spec.replicas = 1
    _template(spec.template)


def _deployment(obj: Message) -> None:
    spec = cast(apps_pb2.Deployment, obj).spec
    if not spec.HasField("replicas"):
        spec.replicas = 1
    if not spec.strategy.type:
        spec.strategy.type = "RollingUpdate"
    if spec.strategy.type == "RollingUpdate":
        rolling = spec.strategy.rolling_update
        if not rolling.HasField("max_surge"):
            rolling.max_surge.string_value = "25%"
        if not rolling.HasField("max_unavailable"):
            rolling.max_unavailable.string_value = "25%"
    if not spec.HasField("revision_history_limit"):
        spec.revision_history_limit = DEFAULT_REVISION_HISTORY_LIMIT
    if not spec.HasField("progress_deadline_seconds"):
        spec.progress_deadline_seconds = DEFAULT_PROGRESS_DEADLINE_SECONDS
    _template(spec.template)


def _daemon_set(obj: Message) -> None:
    spec = cast(apps_pb2.DaemonSet, obj).spec
    strategy = spec.update_strategy
    if not strategy.type:
        strategy.type = "RollingUpdate"
    if strategy.type == "RollingUpdate":
        rolling = strategy.rolling_update
        if not rolling.HasField("max_unavailable"):
            rolling.max_unavailable.number_value = 1
        if not rolling.HasField("max_surge"):
            rolling.max_surge.number_value = 0
    if not spec.HasField("revision_history_limit"):
        spec.revision_history_limit = DEFAULT_REVISION_HISTORY_LIMIT
    _template(spec.template)


def _stateful_set(obj: Message) -> None:
    """Kubernetes' SetDefaults_StatefulSet."""
    spec = cast(apps_pb2.StatefulSet, obj).spec
    if not spec.HasField("replicas"):
        spec.replicas = 1
    if not spec.pod_management_policy:
        spec.pod_management_policy = "OrderedReady"
    strategy = spec.update_strategy
    if not strategy.type:
        strategy.type = "RollingUpdate"
    if strategy.type == "RollingUpdate" and not strategy.rolling_update.HasField("partition"):
        strategy.rolling_update.partition = 0
    if not spec.HasField("revision_history_limit"):
        spec.revision_history_limit = DEFAULT_REVISION_HISTORY_LIMIT
    retention = spec.persistent_volume_claim_retention_policy
    retention.when_deleted = retention.when_deleted or "Retain"
    retention.when_scaled = retention.when_scaled or "Retain"
    for claim in spec.volume_claim_templates:
        _claim_spec(claim.spec)
    _template(spec.template)


# ------------------------------------------------------------------- Storage


def _claim_spec(spec: storage_pb2.PersistentVolumeClaimSpec) -> None:
    if not spec.HasField("volume_mode"):
        spec.volume_mode = "Filesystem"


def _persistent_volume_claim(obj: Message) -> None:
    # The default StorageClass is filled in by the strategy, which reads the store.
    _claim_spec(cast(storage_pb2.PersistentVolumeClaim, obj).spec)


def _persistent_volume(obj: Message) -> None:
    spec = cast(storage_pb2.PersistentVolume, obj).spec
    if not spec.persistent_volume_reclaim_policy:
        spec.persistent_volume_reclaim_policy = "Retain"
    if not spec.HasField("volume_mode"):
        spec.volume_mode = "Filesystem"


def _storage_class(obj: Message) -> None:
    sc = cast(storage_pb2.StorageClass, obj)
    if not sc.HasField("reclaim_policy"):
        sc.reclaim_policy = "Delete"
    if not sc.HasField("volume_binding_mode"):
        sc.volume_binding_mode = "Immediate"


# --------------------------------------------------------------------- Batch


def default_job_spec(spec: batch_pb2.JobSpec) -> None:
    """Kubernetes' SetDefaults_Job for a spec. Without completions or parallelism
    the Job runs one pod to success; parallelism alone is the work-queue pattern
    (completions stays unset: the Job is done once a pod succeeds and all ended)."""
    if not spec.HasField("completions") and not spec.HasField("parallelism"):
        spec.completions = 1
    if not spec.HasField("parallelism"):
        spec.parallelism = 1
    if not spec.HasField("backoff_limit"):
        spec.backoff_limit = DEFAULT_BACKOFF_LIMIT
    if not spec.completion_mode:
        spec.completion_mode = "NonIndexed"
    if not spec.HasField("suspend"):
        spec.suspend = False
    _template(spec.template)


def _job(obj: Message) -> None:
    job = cast(batch_pb2.Job, obj)
    default_job_spec(job.spec)
    if not job.metadata.labels:
        job.metadata.labels.update(job.spec.template.metadata.labels)


def _cron_job(obj: Message) -> None:
    spec = cast(batch_pb2.CronJob, obj).spec
    if not spec.concurrency_policy:
        spec.concurrency_policy = "Allow"
    if not spec.HasField("suspend"):
        spec.suspend = False
    if not spec.HasField("successful_jobs_history_limit"):
        spec.successful_jobs_history_limit = DEFAULT_SUCCESSFUL_JOBS_HISTORY_LIMIT
    if not spec.HasField("failed_jobs_history_limit"):
        spec.failed_jobs_history_limit = DEFAULT_FAILED_JOBS_HISTORY_LIMIT
    # Only the pod template: the Job made from it gets the Job defaults then.
    _template(spec.job_template.spec.template)


# ---------------------------------------------------------------- Namespaces


def _namespace(obj: Message) -> None:
    namespace = cast(core_pb2.Namespace, obj)
    if not namespace.status.phase:
        namespace.status.phase = "Active"
    # Once deletion has started the namespace controller clears the finalizer
    # to release the namespace; putting it back would keep it forever.
    if not namespace.spec.finalizers and not namespace.metadata.HasField("deletion_timestamp"):
        namespace.spec.finalizers.append(NAMESPACE_FINALIZER)


def _event(obj: Message) -> None:
    event = cast(core_pb2.Event, obj)
    if not event.type:
        event.type = "Normal"
    if event.count == 0:
        event.count = 1


def _secret(obj: Message) -> None:
    secret = cast(core_pb2.Secret, obj)
    if not secret.type:
        secret.type = DEFAULT_SECRET_TYPE
    # stringData is write-only, as in Kubernetes: merged into data (its keys win)
    # and never stored, so reads return only data.
    for key, value in secret.string_data.items():
        secret.data[key] = value.encode()
    secret.string_data.clear()


_HANDLERS: dict[type[Message], Callable[[Message], None]] = {
    core_pb2.Pod: _pod,
    core_pb2.Service: _service,
    core_pb2.Namespace: _namespace,
    core_pb2.Event: _event,
    discovery_pb2.EndpointSlice: _endpoint_slice,
    apps_pb2.ReplicaSet: _replica_set,
    apps_pb2.Deployment: _deployment,
    apps_pb2.DaemonSet: _daemon_set,
    core_pb2.Secret: _secret,
    batch_pb2.Job: _job,
    batch_pb2.CronJob: _cron_job,
    apps_pb2.StatefulSet: _stateful_set,
    storage_pb2.PersistentVolume: _persistent_volume,
    storage_pb2.PersistentVolumeClaim: _persistent_volume_claim,
    storage_pb2.StorageClass: _storage_class,
}
