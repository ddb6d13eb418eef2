"""The columns `kubeling get` shows for each kind, following kubectl's printers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf.message import Message

from kubeling.api import kinds
from kubeling.api import storage as st
from kubeling.api.kinds import Kind
from kubeling.cli.timefmt import age, human_duration, is_set
from kubeling.v1 import (
    apps_pb2,
    batch_pb2,
    coordination_pb2,
    core_pb2,
    discovery_pb2,
    meta_pb2,
    storage_pb2,
)

Row = list[str]
RowOf = Callable[[Any], Row]
NONE = "<none>"


@dataclass(frozen=True)
class Columns:
    """Headers and cell values; the wide ones are appended with `-o wide`."""

    headers: tuple[str, ...]
    row: RowOf
    wide_headers: tuple[str, ...] = ()
    wide_row: RowOf | None = None

    def header(self, wide: bool) -> Row:
        return [*self.headers, *(self.wide_headers if wide else ())]

    def cells(self, obj: Message, wide: bool) -> Row:
        row = self.row(obj)
        if wide and self.wide_row is not None:
            row += self.wide_row(obj)
        return row


def _name(obj: Any) -> str:
    return str(obj.metadata.name)


def _age(obj: Any) -> str:
    return age(obj.metadata.creation_timestamp)


def _join(values: Iterable[str], empty: str = NONE) -> str:
    text = ",".join(v for v in values if v)
    return text or empty


def label_text(labels: Any) -> str:
    return _join(f"{k}={v}" for k, v in sorted(labels.items()))


def selector_text(selector: meta_pb2.LabelSelector) -> str:
    """A LabelSelector in its string form: "app=web,tier in (a,b)"."""
    terms = [f"{k}={v}" for k, v in sorted(selector.match_labels.items())]
    for expr in selector.match_expressions:
        op = expr.operator
        if op in ("In", "NotIn"):
            terms.append(f"{expr.key} {op.lower()} ({','.join(expr.values)})")
        elif op == "Exists":
            terms.append(expr.key)
        elif op == "DoesNotExist":
            terms.append(f"!{expr.key}")
    return _join(terms)


# ------------------------------------------------------------------------- pods


def pod_status(pod: core_pb2.Pod) -> str:
    """kubectl's STATUS column: the most telling reason, not just the phase."""
    reason = pod.status.reason or pod.status.phase or "Unknown"
    initializing = False
    init_total = len(pod.spec.init_containers)
    for index, status in enumerate(pod.status.init_container_statuses):
        state = status.state
        if state.HasField("terminated") and state.terminated.exit_code == 0:
            continue
        initializing = True
        if state.HasField("terminated"):
            term = state.terminated
            if term.reason:
                reason = f"Init:{term.reason}"
            elif term.signal:
                reason = f"Init:Signal:{term.signal}"
            else:
                reason = f"Init:ExitCode:{term.exit_code}"
        elif state.waiting.reason and state.waiting.reason != "PodInitializing":
            reason = f"Init:{state.waiting.reason}"
        else:
            reason = f"Init:{index}/{init_total}"
        break
    if not initializing:
        has_running = False
        for status in reversed(pod.status.container_statuses):
            state = status.state
            if state.HasField("waiting") and state.waiting.reason:
                reason = state.waiting.reason
            elif state.HasField("terminated") and state.terminated.reason:
                reason = state.terminated.reason
            elif state.HasField("terminated"):
                term = state.terminated
                reason = f"Signal:{term.signal}" if term.signal else f"ExitCode:{term.exit_code}"
            elif state.HasField("running") and status.ready:
                has_running = True
        if reason == "Completed" and has_running:
            ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)
            reason = "Running" if ready else "NotReady"
    if pod.metadata.HasField("deletion_timestamp"):
        reason = "Unknown" if pod.status.reason == "NodeLost" else "Terminating"
    return reason


def pod_ready(pod: core_pb2.Pod) -> str:
    ready = sum(1 for s in pod.status.container_statuses if s.ready)
    return f"{ready}/{len(pod.spec.containers)}"


def pod_restarts(pod: core_pb2.Pod) -> str:
    statuses = list(pod.status.container_statuses)
    restarts = sum(s.restart_count for s in statuses)
    finished = [
        s.last_state.terminated.finished_at
        for s in statuses
        if s.last_state.HasField("terminated") and is_set(s.last_state.terminated.finished_at)
    ]
    if restarts and finished:
        latest = max(finished, key=lambda t: (t.seconds, t.nanos))
        return f"{restarts} ({age(latest)} ago)"
    return str(restarts)


def _pod_row(obj: Any) -> Row:
    pod = cast(core_pb2.Pod, obj)
    return [_name(pod), pod_ready(pod), pod_status(pod), pod_restarts(pod), _age(pod)]


def _pod_wide(obj: Any) -> Row:
    pod = cast(core_pb2.Pod, obj)
    return [pod.status.pod_ip or NONE, pod.spec.node_name or NONE]


# ------------------------------------------------------------------------ nodes


def node_status(node: core_pb2.Node) -> str:
    ready = next((c for c in node.status.conditions if c.type == "Ready"), None)
    status = "Unknown" if ready is None else ("Ready" if ready.status == "True" else "NotReady")
    if node.spec.unschedulable:
        status += ",SchedulingDisabled"
    return status


def node_roles(node: core_pb2.Node) -> str:
    prefix = "node-role.kubernetes.io/"
    roles = sorted(k.removeprefix(prefix) for k in node.metadata.labels if k.startswith(prefix))
    legacy = node.metadata.labels.get("kubernetes.io/role")
    if legacy:
        roles.append(legacy)
    return _join(roles)


def node_address(node: core_pb2.Node, kind: str) -> str:
    return _join(a.address for a in node.status.addresses if a.type == kind)


def _node_row(obj: Any) -> Row:
    node = cast(core_pb2.Node, obj)
    version = node.status.node_info.kubelet_version or NONE
    return [_name(node), node_status(node), node_roles(node), _age(node), version]


def _node_wide(obj: Any) -> Row:
    node = cast(core_pb2.Node, obj)
    info = node.status.node_info
    return [
        node_address(node, "InternalIP"),
        node_address(node, "ExternalIP"),
        info.os_image or NONE,
        info.kernel_version or NONE,
        info.container_runtime_version or NONE,
    ]


# --------------------------------------------------------------------- services


def service_ports(svc: core_pb2.Service) -> str:
    parts = []
    for port in svc.spec.ports:
        protocol = port.protocol or "TCP"
        node = f":{port.node_port}" if port.node_port else ""
        parts.append(f"{port.port}{node}/{protocol}")
    return _join(parts)


def _service_row(obj: Any) -> Row:
    svc = cast(core_pb2.Service, obj)
    return [
        _name(svc),
        svc.spec.type or "ClusterIP",
        svc.spec.cluster_ip or NONE,
        service_ports(svc),
        _age(svc),
    ]


def _service_wide(obj: Any) -> Row:
    return [label_text(cast(core_pb2.Service, obj).spec.selector)]


# -------------------------------------------------------------------- workloads


def containers_and_images(template: core_pb2.PodTemplateSpec) -> Row:
    containers = template.spec.containers
    return [_join(c.name for c in containers), _join(c.image for c in containers)]


def _deployment_row(obj: Any) -> Row:
    deploy = cast(apps_pb2.Deployment, obj)
    desired = deploy.spec.replicas if deploy.spec.HasField("replicas") else 1
    status = deploy.status
    return [
        _name(deploy),
        f"{status.ready_replicas}/{desired}",
        str(status.updated_replicas),
        str(status.available_replicas),
        _age(deploy),
    ]


def _deployment_wide(obj: Any) -> Row:
    deploy = cast(apps_pb2.Deployment, obj)
    return [*containers_and_images(deploy.spec.template), selector_text(deploy.spec.selector)]


def _replica_set_row(obj: Any) -> Row:
    rs = cast(apps_pb2.ReplicaSet, obj)
    desired = rs.spec.replicas if rs.spec.HasField("replicas") else 1
    return [
        _name(rs),
        str(desired),
        str(rs.status.replicas),
        str(rs.status.ready_replicas),
        _age(rs),
    ]


def _replica_set_wide(obj: Any) -> Row:
    rs = cast(apps_pb2.ReplicaSet, obj)
    return [*containers_and_images(rs.spec.template), selector_text(rs.spec.selector)]


def _daemon_set_row(obj: Any) -> Row:
    ds = cast(apps_pb2.DaemonSet, obj)
    status = ds.status
    return [
        _name(ds),
        str(status.desired_number_scheduled),
        str(status.current_number_scheduled),
        str(status.number_ready),
        str(status.updated_number_scheduled),
        str(status.number_available),
        _age(ds),
    ]


def _daemon_set_wide(obj: Any) -> Row:
    ds = cast(apps_pb2.DaemonSet, obj)
    return [*containers_and_images(ds.spec.template), selector_text(ds.spec.selector)]


def _stateful_set_row(obj: Any) -> Row:
    sts = cast(apps_pb2.StatefulSet, obj)
    desired = sts.spec.replicas if sts.spec.HasField("replicas") else 1
    return [_name(sts), f"{sts.status.ready_replicas}/{desired}", _age(sts)]


def _stateful_set_wide(obj: Any) -> Row:
    return containers_and_images(cast(apps_pb2.StatefulSet, obj).spec.template)


def _controller_revision_row(obj: Any) -> Row:
    revision = cast(apps_pb2.ControllerRevision, obj)
    owner = next((r for r in revision.metadata.owner_references if r.controller), None)
    controller = NONE
    if owner is not None:
        group = owner.api_version.partition("/")[0] if "/" in owner.api_version else ""
        controller = f"{owner.kind.lower()}{'.' + group if group else ''}/{owner.name}"
    return [_name(revision), controller, str(revision.revision), _age(revision)]


# ---------------------------------------------------------------------- storage

_ACCESS_MODES = {
    "ReadWriteOnce": "RWO",
    "ReadOnlyMany": "ROX",
    "ReadWriteMany": "RWX",
    "ReadWriteOncePod": "RWOP",
}


def access_modes(modes: Iterable[str]) -> str:
    """kubectl's short form: "RWO,ROX"."""
    return ",".join(_ACCESS_MODES.get(m, m) for m in modes)


def _volume_mode(holder: Any) -> str:
    return str(holder.volume_mode) if holder.HasField("volume_mode") else "Filesystem"


def _pv_row(obj: Any) -> Row:
    pv = cast(storage_pb2.PersistentVolume, obj)
    ref = pv.spec.claim_ref
    claim = f"{ref.namespace}/{ref.name}" if ref.name else ""
    phase = "Terminating" if pv.metadata.HasField("deletion_timestamp") else pv.status.phase
    return [
        _name(pv),
        pv.spec.capacity.get("storage", ""),
        access_modes(pv.spec.access_modes),
        pv.spec.persistent_volume_reclaim_policy,
        phase,
        claim,
        pv.spec.storage_class_name,
        pv.status.reason,
        _age(pv),
    ]


def _pvc_row(obj: Any) -> Row:
    pvc = cast(storage_pb2.PersistentVolumeClaim, obj)
    phase = "Terminating" if pvc.metadata.HasField("deletion_timestamp") else pvc.status.phase
    return [
        _name(pvc),
        phase,
        pvc.spec.volume_name,
        pvc.status.capacity.get("storage", ""),
        access_modes(pvc.status.access_modes),
        st.claim_class(pvc) or NONE,
        _age(pvc),
    ]


def _storage_class_row(obj: Any) -> Row:
    sc = cast(storage_pb2.StorageClass, obj)
    name = _name(sc) + (" (default)" if st.is_default_class(sc) else "")
    expansion = sc.allow_volume_expansion if sc.HasField("allow_volume_expansion") else False
    return [
        name,
        sc.provisioner,
        st.reclaim_policy(sc),
        st.binding_mode(sc),
        str(expansion).lower(),
        _age(sc),
    ]


# ------------------------------------------------------------------------ batch


def _has_condition(job: batch_pb2.Job, type_: str) -> bool:
    return any(c.type == type_ and c.status == "True" for c in job.status.conditions)


def job_status(job: batch_pb2.Job) -> str:
    """kubectl's STATUS column of a Job."""
    if _has_condition(job, "Complete"):
        return "Complete"
    if _has_condition(job, "Failed"):
        return "Failed"
    if job.metadata.HasField("deletion_timestamp"):
        return "Terminating"
    for type_ in ("Suspended", "FailureTarget", "SuccessCriteriaMet"):
        if _has_condition(job, type_):
            return type_
    return "Running"


def job_completions(job: batch_pb2.Job) -> str:
    succeeded = job.status.succeeded
    if job.spec.HasField("completions"):
        return f"{succeeded}/{job.spec.completions}"
    parallelism = job.spec.parallelism
    return f"{succeeded}/1 of {parallelism}" if parallelism > 1 else f"{succeeded}/1"


def job_duration(job: batch_pb2.Job, now: float | None = None) -> str:
    status = job.status
    if not is_set(status.start_time):
        return ""
    start = status.start_time.seconds + status.start_time.nanos / 1e9
    if is_set(status.completion_time):
        end = status.completion_time.seconds + status.completion_time.nanos / 1e9
        return human_duration(end - start)
    return age(status.start_time, now)


def _job_row(obj: Any) -> Row:
    job = cast(batch_pb2.Job, obj)
    return [_name(job), job_status(job), job_completions(job), job_duration(job), _age(job)]


def _job_wide(obj: Any) -> Row:
    job = cast(batch_pb2.Job, obj)
    return [*containers_and_images(job.spec.template), selector_text(job.spec.selector)]


def _cron_job_row(obj: Any) -> Row:
    cj = cast(batch_pb2.CronJob, obj)
    spec, status = cj.spec, cj.status
    last = age(status.last_schedule_time) if is_set(status.last_schedule_time) else NONE
    return [
        _name(cj),
        spec.schedule,
        spec.time_zone or NONE,
        "True" if spec.suspend else "False",
        str(len(status.active)),
        last,
        _age(cj),
    ]


def _cron_job_wide(obj: Any) -> Row:
    cj = cast(batch_pb2.CronJob, obj)
    job_spec = cj.spec.job_template.spec
    return [*containers_and_images(job_spec.template), selector_text(job_spec.selector)]


# ------------------------------------------------------------------- the others


def _endpoint_slice_row(obj: Any) -> Row:
    es = cast(discovery_pb2.EndpointSlice, obj)
    ports = _join((str(p.port) for p in es.ports if p.HasField("port")), "<unset>")
    addresses = [a for e in es.endpoints for a in e.addresses]
    shown = ",".join(addresses[:3])
    if len(addresses) > 3:
        shown += f" + {len(addresses) - 3} more..."
    return [_name(es), es.address_type or "IPv4", ports, shown or NONE, _age(es)]


def _namespace_row(obj: Any) -> Row:
    ns = cast(core_pb2.Namespace, obj)
    return [_name(ns), ns.status.phase or "Active", _age(ns)]


def event_last_seen(event: core_pb2.Event) -> str:
    if is_set(event.last_timestamp):
        return age(event.last_timestamp)
    if is_set(event.first_timestamp):
        return age(event.first_timestamp)
    return _age(event)


def event_object(event: core_pb2.Event) -> str:
    ref = event.involved_object
    return f"{ref.kind.lower()}/{ref.name}" if ref.kind else ref.name


def _event_row(obj: Any) -> Row:
    event = cast(core_pb2.Event, obj)
    return [
        event_last_seen(event),
        event.type or "Normal",
        event.reason,
        event_object(event),
        event.message,
    ]


def _lease_row(obj: Any) -> Row:
    lease = cast(coordination_pb2.Lease, obj)
    return [_name(lease), lease.spec.holder_identity or NONE, _age(lease)]


def _config_map_row(obj: Any) -> Row:
    cm = cast(core_pb2.ConfigMap, obj)
    return [_name(cm), str(len(cm.data) + len(cm.binary_data)), _age(cm)]


def _secret_row(obj: Any) -> Row:
    secret = cast(core_pb2.Secret, obj)
    return [_name(secret), secret.type or "Opaque", str(len(secret.data)), _age(secret)]


COLUMNS: dict[str, Columns] = {
    kinds.POD.name: Columns(
        ("NAME", "READY", "STATUS", "RESTARTS", "AGE"), _pod_row, ("IP", "NODE"), _pod_wide
    ),
    kinds.NODE.name: Columns(
        ("NAME", "STATUS", "ROLES", "AGE", "VERSION"),
        _node_row,
        ("INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"),
        _node_wide,
    ),
    kinds.SERVICE.name: Columns(
        ("NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"), _service_row, ("SELECTOR",), _service_wide
    ),
    kinds.DEPLOYMENT.name: Columns(
        ("NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"),
        _deployment_row,
        ("CONTAINERS", "IMAGES", "SELECTOR"),
        _deployment_wide,
    ),
    kinds.REPLICA_SET.name: Columns(
        ("NAME", "DESIRED", "CURRENT", "READY", "AGE"),
        _replica_set_row,
        ("CONTAINERS", "IMAGES", "SELECTOR"),
        _replica_set_wide,
    ),
    kinds.DAEMON_SET.name: Columns(
        ("NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"),
        _daemon_set_row,
        ("CONTAINERS", "IMAGES", "SELECTOR"),
        _daemon_set_wide,
    ),
    kinds.STATEFUL_SET.name: Columns(
        ("NAME", "READY", "AGE"), _stateful_set_row, ("CONTAINERS", "IMAGES"), _stateful_set_wide
    ),
    kinds.CONTROLLER_REVISION.name: Columns(
        ("NAME", "CONTROLLER", "REVISION", "AGE"), _controller_revision_row
    ),
    kinds.PERSISTENT_VOLUME.name: Columns(
        (
            "NAME",
            "CAPACITY",
            "ACCESS MODES",
            "RECLAIM POLICY",
            "STATUS",
            "CLAIM",
            "STORAGECLASS",
            "REASON",
            "AGE",
        ),
        _pv_row,
        ("VOLUMEMODE",),
        lambda obj: [_volume_mode(obj.spec)],
    ),
    kinds.PERSISTENT_VOLUME_CLAIM.name: Columns(
        ("NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS MODES", "STORAGECLASS", "AGE"),
        _pvc_row,
        ("VOLUMEMODE",),
        lambda obj: [_volume_mode(obj.spec)],
    ),
    kinds.STORAGE_CLASS.name: Columns(
        (
            "NAME",
            "PROVISIONER",
            "RECLAIMPOLICY",
            "VOLUMEBINDINGMODE",
            "ALLOWVOLUMEEXPANSION",
            "AGE",
        ),
        _storage_class_row,
    ),
    kinds.JOB.name: Columns(
        ("NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"),
        _job_row,
        ("CONTAINERS", "IMAGES", "SELECTOR"),
        _job_wide,
    ),
    kinds.CRON_JOB.name: Columns(
        ("NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST SCHEDULE", "AGE"),
        _cron_job_row,
        ("CONTAINERS", "IMAGES", "SELECTOR"),
        _cron_job_wide,
    ),
    kinds.ENDPOINT_SLICE.name: Columns(
        ("NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"), _endpoint_slice_row
    ),
    kinds.NAMESPACE.name: Columns(("NAME", "STATUS", "AGE"), _namespace_row),
    kinds.EVENT.name: Columns(("LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"), _event_row),
    kinds.LEASE.name: Columns(("NAME", "HOLDER", "AGE"), _lease_row),
    kinds.CONFIG_MAP.name: Columns(("NAME", "DATA", "AGE"), _config_map_row),
    kinds.SECRET.name: Columns(("NAME", "TYPE", "DATA", "AGE"), _secret_row),
}

_DEFAULT = Columns(("NAME", "AGE"), lambda obj: [_name(obj), _age(obj)])


def columns_for(kind: Kind) -> Columns:
    return COLUMNS.get(kind.name, _DEFAULT)
