"""`kubeling describe` text for each kind, from the object and related objects
(its events, a node's pods, a service's endpoint slices...)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, cast

from google.protobuf.message import Message

from kubeling.api import kinds
from kubeling.api.kinds import Kind
from kubeling.api.quantity import QuantityError, format_quantity, parse_quantity
from kubeling.cli.document import Document
from kubeling.cli.printers import dump_yaml, output_dict
from kubeling.cli.tables import (
    NONE,
    job_duration,
    label_text,
    node_roles,
    pod_status,
    selector_text,
    service_ports,
)
from kubeling.cli.timefmt import age, is_set, rfc1123
from kubeling.v1 import apps_pb2, batch_pb2, core_pb2, discovery_pb2, meta_pb2


@dataclass
class Related:
    """Objects fetched alongside the described one."""

    events: list[core_pb2.Event] = field(default_factory=list)
    pods: list[core_pb2.Pod] = field(default_factory=list)
    replica_sets: list[apps_pb2.ReplicaSet] = field(default_factory=list)
    endpoint_slices: list[discovery_pb2.EndpointSlice] = field(default_factory=list)


Describer = Callable[[Document, Any, Related], None]


def describe(kind: Kind, obj: Message, related: Related) -> str:
    doc = Document()
    _metadata(doc, kind, obj)
    _DESCRIBERS.get(kind.name, _generic)(doc, obj, related)
    _events(doc, related.events)
    return doc.render()


# ---------------------------------------------------------------------- shared


def _metadata(doc: Document, kind: Kind, obj: Any) -> None:
    meta = obj.metadata
    doc.add("Name", meta.name)
    if kind.namespaced:
        doc.add("Namespace", meta.namespace)
    doc.add("Labels", _pairs(meta.labels))
    doc.add("Annotations", _pairs(meta.annotations))
    doc.add("CreationTimestamp", rfc1123(meta.creation_timestamp))
    if meta.HasField("deletion_timestamp"):
        grace = (
            f" (grace {meta.deletion_grace_period_seconds}s)"
            if meta.HasField("deletion_grace_period_seconds")
            else ""
        )
        doc.add("Terminating Since", rfc1123(meta.deletion_timestamp) + grace)
    controller = next((ref for ref in meta.owner_references if ref.controller), None)
    if controller is not None:
        doc.add("Controlled By", f"{controller.kind}/{controller.name}")
    if meta.finalizers:
        doc.add("Finalizers", list(meta.finalizers))


def _pairs(values: Any) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(values.items())] or [NONE]


def _conditions(doc: Document, conditions: Iterable[meta_pb2.Condition]) -> None:
    rows = [[c.type, c.status, c.reason or NONE, c.message] for c in conditions]
    if not rows:
        doc.add("Conditions", NONE)
        return
    doc.heading("Conditions")
    doc.table(["Type", "Status", "Reason", "Message"], rows)


def _events(doc: Document, events: list[core_pb2.Event]) -> None:
    if not events:
        doc.add("Events", NONE)
        return
    doc.heading("Events")
    rows = []
    for event in events:
        last = (
            event.last_timestamp
            if is_set(event.last_timestamp)
            else event.metadata.creation_timestamp
        )
        when = age(last)
        if event.count > 1 and is_set(event.first_timestamp):
            when = f"{when} (x{event.count} over {age(event.first_timestamp)})"
        source = event.source.component or event.reporting_component or NONE
        rows.append([event.type or "Normal", event.reason, when, source, event.message])
    doc.table(["Type", "Reason", "Age", "From", "Message"], rows)


def _generic(doc: Document, obj: Any, related: Related) -> None:
    """Kinds without a dedicated layout: everything but metadata, as YAML."""
    data = output_dict(_kind_of(obj), obj)
    for key in ("apiVersion", "kind", "metadata"):
        data.pop(key, None)
    for key, value in data.items():
        doc.heading(key[:1].upper() + key[1:])
        for line in dump_yaml(value).splitlines():
            doc.raw(line)


def _kind_of(obj: Message) -> Kind:
    return next(k for k in kinds.ALL_KINDS if isinstance(obj, k.message))


# ------------------------------------------------------------------------ pods


def _pod(doc: Document, obj: Any, related: Related) -> None:
    pod = cast(core_pb2.Pod, obj)
    spec, status = pod.spec, pod.status
    node = spec.node_name or NONE
    if spec.node_name and status.host_ip:
        node = f"{spec.node_name}/{status.host_ip}"
    doc.add("Node", node)
    if is_set(status.start_time):
        doc.add("Start Time", rfc1123(status.start_time))
    doc.add("Status", pod_status(pod))
    if status.reason:
        doc.add("Reason", status.reason)
    if status.message:
        doc.add("Message", status.message)
    doc.add("IP", status.pod_ip or NONE)
    if spec.init_containers:
        doc.heading("Init Containers")
        _containers(doc, spec.init_containers, status.init_container_statuses)
    doc.heading("Containers")
    _containers(doc, spec.containers, status.container_statuses)
    _conditions(doc, status.conditions)
    if status.qos_class:
        doc.add("QoS Class", status.qos_class)
    doc.add("Node-Selectors", _pairs(spec.node_selector))
    doc.add("Tolerations", [_toleration(t) for t in spec.tolerations] or [NONE])


def _containers(
    doc: Document,
    containers: Iterable[core_pb2.Container],
    statuses: Iterable[core_pb2.ContainerStatus],
    level: int = 1,
) -> None:
    by_name = {s.name: s for s in statuses}
    for container in containers:
        doc.heading(container.name, level)
        inner = level + 1
        status = by_name.get(container.name)
        if status is not None and status.container_id:
            doc.add("Container ID", status.container_id, inner)
        doc.add("Image", container.image, inner)
        ports = [f"{p.container_port}/{p.protocol or 'TCP'}" for p in container.ports]
        doc.add("Port" + ("s" if len(ports) > 1 else ""), ", ".join(ports) or NONE, inner)
        if container.command:
            doc.add("Command", list(container.command), inner)
        if container.args:
            doc.add("Args", list(container.args), inner)
        if status is not None:
            _state(doc, "State", status.state, inner)
            if _has_state(status.last_state):
                _state(doc, "Last State", status.last_state, inner)
            doc.add("Ready", str(status.ready), inner)
            doc.add("Restart Count", str(status.restart_count), inner)
        for label, values in (
            ("Limits", container.resources.limits),
            ("Requests", container.resources.requests),
        ):
            if values:
                doc.heading(label, inner)
                for name, quantity in sorted(values.items()):
                    doc.add(name, quantity, inner + 1)
        for label, probe in (
            ("Liveness", container.liveness_probe),
            ("Readiness", container.readiness_probe),
            ("Startup", container.startup_probe),
        ):
            if container.HasField(_probe_field(label)):  # type: ignore[arg-type]
                doc.add(label, _probe(probe), inner)
        if container.env:
            doc.heading("Environment", inner)
            for env in container.env:
                value = env.value
                if env.value_from.HasField("field_ref"):
                    value = f"({env.value_from.field_ref.field_path})"
                doc.add(env.name, value or '""', inner + 1)
        else:
            doc.add("Environment", NONE, inner)


def _has_state(state: core_pb2.ContainerState) -> bool:
    return any(state.HasField(f) for f in ("waiting", "running", "terminated"))


def _state(doc: Document, label: str, state: core_pb2.ContainerState, level: int) -> None:
    if state.HasField("running"):
        doc.add(label, "Running", level)
        doc.add("Started", rfc1123(state.running.started_at), level + 1)
    elif state.HasField("terminated"):
        term = state.terminated
        doc.add(label, "Terminated", level)
        if term.reason:
            doc.add("Reason", term.reason, level + 1)
        if term.message:
            doc.add("Message", term.message, level + 1)
        doc.add("Exit Code", str(term.exit_code), level + 1)
        if term.signal:
            doc.add("Signal", str(term.signal), level + 1)
        doc.add("Started", rfc1123(term.started_at), level + 1)
        doc.add("Finished", rfc1123(term.finished_at), level + 1)
    elif state.HasField("waiting"):
        doc.add(label, "Waiting", level)
        if state.waiting.reason:
            doc.add("Reason", state.waiting.reason, level + 1)
        if state.waiting.message:
            doc.add("Message", state.waiting.message, level + 1)
    else:
        doc.add(label, "Waiting", level)


def _probe_field(label: str) -> str:
    return f"{label.lower()}_probe"


def _probe(probe: core_pb2.Probe) -> str:
    if probe.HasField("http_get"):
        get = probe.http_get
        action = (
            f"http-get {(get.scheme or 'HTTP').lower()}://{get.host}:{_port(get.port)}{get.path}"
        )
    elif probe.HasField("tcp_socket"):
        action = f"tcp-socket {probe.tcp_socket.host}:{_port(probe.tcp_socket.port)}"
    elif probe.HasField("exec"):
        action = f"exec [{' '.join(probe.exec.command)}]"
    else:
        action = "unknown"
    return (
        f"{action} delay={probe.initial_delay_seconds}s timeout={probe.timeout_seconds}s "
        f"period={probe.period_seconds}s #success={probe.success_threshold} "
        f"#failure={probe.failure_threshold}"
    )


def _port(value: Any) -> str:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return str(int(value.number_value))
    if kind == "string_value":
        return str(value.string_value)
    return ""


def _toleration(toleration: core_pb2.Toleration) -> str:
    text = toleration.key
    if toleration.operator == "Exists":
        text += " op=Exists" if text else "op=Exists"
    elif toleration.value:
        text += f"={toleration.value}"
    if toleration.effect:
        text += f":{toleration.effect}"
    if toleration.HasField("toleration_seconds"):
        text += f" for {toleration.toleration_seconds}s"
    return text


def _pod_template(doc: Document, template: core_pb2.PodTemplateSpec) -> None:
    doc.heading("Pod Template")
    doc.add("Labels", _pairs(template.metadata.labels), 1)
    doc.heading("Containers", 1)
    _containers(doc, template.spec.containers, [], level=2)


def _pods_status(pods: list[core_pb2.Pod]) -> str:
    counts = {phase: 0 for phase in ("Running", "Pending", "Succeeded", "Failed")}
    for pod in pods:
        phase = pod.status.phase
        if phase in counts:
            counts[phase] += 1
    return (
        f"{counts['Running']} Running / {counts['Pending']} Waiting / "
        f"{counts['Succeeded']} Succeeded / {counts['Failed']} Failed"
    )


# ------------------------------------------------------------------- workloads


def _deployment(doc: Document, obj: Any, related: Related) -> None:
    deploy = cast(apps_pb2.Deployment, obj)
    spec, status = deploy.spec, deploy.status
    desired = spec.replicas if spec.HasField("replicas") else 1
    doc.add("Selector", selector_text(spec.selector))
    doc.add(
        "Replicas",
        f"{desired} desired | {status.updated_replicas} updated | {status.replicas} total | "
        f"{status.available_replicas} available | {status.unavailable_replicas} unavailable",
    )
    strategy = spec.strategy.type or "RollingUpdate"
    doc.add("StrategyType", strategy)
    doc.add("MinReadySeconds", str(spec.min_ready_seconds))
    if strategy == "RollingUpdate":
        rolling = spec.strategy.rolling_update
        unavailable = _port(rolling.max_unavailable) or "25%"
        surge = _port(rolling.max_surge) or "25%"
        doc.add("RollingUpdateStrategy", f"{unavailable} max unavailable, {surge} max surge")
    _pod_template(doc, spec.template)
    _conditions(doc, status.conditions)
    # The newest revision is the one the deployment is rolling towards.
    owned = sorted((rs for rs in related.replica_sets if _owned_by(rs, deploy)), key=_revision)
    doc.add("NewReplicaSet", _rs_line(owned[-1]) if owned else NONE)
    doc.add("OldReplicaSets", [_rs_line(rs) for rs in owned[:-1] if rs.status.replicas] or NONE)


def _rs_line(rs: apps_pb2.ReplicaSet) -> str:
    desired = rs.spec.replicas if rs.spec.HasField("replicas") else 1
    return f"{rs.metadata.name} ({rs.status.replicas}/{desired} replicas created)"


def _revision(rs: apps_pb2.ReplicaSet) -> int:
    text = rs.metadata.annotations.get("deployment.kubernetes.io/revision", "0")
    return int(text) if text.isdigit() else 0


def _owned_by(obj: Any, owner: Any) -> bool:
    return any(ref.uid == owner.metadata.uid for ref in obj.metadata.owner_references)


def _replica_set(doc: Document, obj: Any, related: Related) -> None:
    rs = cast(apps_pb2.ReplicaSet, obj)
    desired = rs.spec.replicas if rs.spec.HasField("replicas") else 1
    doc.add("Selector", selector_text(rs.spec.selector))
    doc.add("Replicas", f"{rs.status.replicas} current / {desired} desired")
    doc.add("Pods Status", _pods_status([p for p in related.pods if _owned_by(p, rs)]))
    _pod_template(doc, rs.spec.template)
    _conditions(doc, rs.status.conditions)


def _daemon_set(doc: Document, obj: Any, related: Related) -> None:
    ds = cast(apps_pb2.DaemonSet, obj)
    status = ds.status
    doc.add("Selector", selector_text(ds.spec.selector))
    doc.add("Node-Selector", label_text(ds.spec.template.spec.node_selector))
    doc.add("Desired Number of Nodes Scheduled", str(status.desired_number_scheduled))
    doc.add("Current Number of Nodes Scheduled", str(status.current_number_scheduled))
    doc.add("Number of Nodes Scheduled with Up-to-date Pods", str(status.updated_number_scheduled))
    doc.add("Number of Nodes Scheduled with Available Pods", str(status.number_available))
    doc.add("Number of Nodes Misscheduled", str(status.number_misscheduled))
    doc.add("Pods Status", _pods_status([p for p in related.pods if _owned_by(p, ds)]))
    _pod_template(doc, ds.spec.template)


# ----------------------------------------------------------------------- batch


def _optional(message: Any, field_name: str) -> str:
    if not message.HasField(field_name):
        return "<unset>"
    value = getattr(message, field_name)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _job(doc: Document, obj: Any, related: Related) -> None:
    job = cast(batch_pb2.Job, obj)
    spec, status = job.spec, job.status
    doc.add("Selector", selector_text(spec.selector))
    doc.add("Parallelism", _optional(spec, "parallelism"))
    doc.add("Completions", _optional(spec, "completions"))
    doc.add("Completion Mode", spec.completion_mode or "NonIndexed")
    doc.add("Suspend", _optional(spec, "suspend"))
    doc.add("Backoff Limit", _optional(spec, "backoff_limit"))
    if spec.HasField("ttl_seconds_after_finished"):
        doc.add("TTL Seconds After Finished", str(spec.ttl_seconds_after_finished))
    if is_set(status.start_time):
        doc.add("Start Time", rfc1123(status.start_time))
    if is_set(status.completion_time):
        doc.add("Completed At", rfc1123(status.completion_time))
    if is_set(status.start_time):
        doc.add("Duration", job_duration(job))
    if spec.HasField("active_deadline_seconds"):
        doc.add("Active Deadline Seconds", f"{spec.active_deadline_seconds}s")
    doc.add(
        "Pods Statuses",
        f"{status.active} Active ({status.ready} Ready) / {status.succeeded} Succeeded / "
        f"{status.failed} Failed",
    )
    if spec.completion_mode == "Indexed":
        doc.add("Completed Indexes", status.completed_indexes or NONE)
    _pod_template(doc, spec.template)
    _conditions(doc, status.conditions)


def _cron_job(doc: Document, obj: Any, related: Related) -> None:
    cj = cast(batch_pb2.CronJob, obj)
    spec, status = cj.spec, cj.status
    doc.add("Schedule", spec.schedule)
    doc.add("Time Zone", spec.time_zone or "<unset>")
    doc.add("Concurrency Policy", spec.concurrency_policy or "Allow")
    doc.add("Suspend", "True" if spec.suspend else "False")
    doc.add("Successful Job History Limit", _optional(spec, "successful_jobs_history_limit"))
    doc.add("Failed Job History Limit", _optional(spec, "failed_jobs_history_limit"))
    doc.add("Starting Deadline Seconds", _optional(spec, "starting_deadline_seconds"))
    job_spec = spec.job_template.spec
    has_selector = job_spec.HasField("selector")
    doc.add("Selector", selector_text(job_spec.selector) if has_selector else "<unset>")
    doc.add("Parallelism", _optional(job_spec, "parallelism"))
    doc.add("Completions", _optional(job_spec, "completions"))
    _pod_template(doc, job_spec.template)
    last = status.last_schedule_time
    doc.add("Last Schedule Time", rfc1123(last) if is_set(last) else "<unset>")
    if is_set(status.last_successful_time):
        doc.add("Last Successful Time", rfc1123(status.last_successful_time))
    doc.add("Active Jobs", ", ".join(ref.name for ref in status.active) or NONE)


# --------------------------------------------------------------------- network


def _service(doc: Document, obj: Any, related: Related) -> None:
    svc = cast(core_pb2.Service, obj)
    spec = svc.spec
    doc.add("Selector", label_text(spec.selector))
    doc.add("Type", spec.type or "ClusterIP")
    doc.add("IP", spec.cluster_ip or NONE)
    if spec.external_ips:
        doc.add("External IPs", ",".join(spec.external_ips))
    if spec.external_name:
        doc.add("External Name", spec.external_name)
    ingress = [i.ip or i.hostname for i in svc.status.load_balancer.ingress]
    if ingress:
        doc.add("LoadBalancer Ingress", ", ".join(ingress))
    endpoints = _service_endpoints(related.endpoint_slices)
    for port in spec.ports:
        name = port.name or "<unset>"
        protocol = port.protocol or "TCP"
        doc.add("Port", f"{name}  {port.port}/{protocol}")
        target = _port(port.target_port) or str(port.port)
        doc.add("TargetPort", f"{target}/{protocol}")
        if port.node_port:
            doc.add("NodePort", f"{name}  {port.node_port}/{protocol}")
        doc.add("Endpoints", ",".join(endpoints.get(port.name, [])) or NONE)
    if not spec.ports:
        doc.add("Port", service_ports(svc))
    doc.add("Session Affinity", spec.session_affinity or "None")
    if spec.external_traffic_policy:
        doc.add("External Traffic Policy", spec.external_traffic_policy)


def _service_endpoints(slices: list[discovery_pb2.EndpointSlice]) -> dict[str, list[str]]:
    """Ready address:port pairs per service port name, from the service's slices."""
    found: dict[str, list[str]] = {}
    for es in slices:
        for port in es.ports:
            for endpoint in es.endpoints:
                conditions = endpoint.conditions
                if conditions.HasField("ready") and not conditions.ready:
                    continue
                found.setdefault(port.name, []).extend(
                    f"{address}:{port.port}" for address in endpoint.addresses
                )
    return found


def _endpoint_slice(doc: Document, obj: Any, related: Related) -> None:
    es = cast(discovery_pb2.EndpointSlice, obj)
    doc.add("AddressType", es.address_type or "IPv4")
    doc.heading("Ports")
    doc.table(
        ["Name", "Port", "Protocol"],
        [[p.name or "<unset>", str(p.port), p.protocol or "TCP"] for p in es.ports],
    )
    doc.heading("Endpoints")
    for endpoint in es.endpoints:
        doc.add("-", ",".join(endpoint.addresses), 1)
        ready = endpoint.conditions.ready if endpoint.conditions.HasField("ready") else True
        doc.add("Ready", str(ready).lower(), 2)
        if endpoint.node_name:
            doc.add("NodeName", endpoint.node_name, 2)
        if endpoint.target_ref.name:
            ref = endpoint.target_ref
            doc.add("TargetRef", f"{ref.kind}/{ref.name}", 2)


# ------------------------------------------------------------ cluster objects


def _node(doc: Document, obj: Any, related: Related) -> None:
    node = cast(core_pb2.Node, obj)
    spec, status = node.spec, node.status
    doc.add("Roles", node_roles(node))
    taints = [
        f"{t.key}={t.value}:{t.effect}" if t.value else f"{t.key}:{t.effect}" for t in spec.taints
    ]
    doc.add("Taints", taints or [NONE])
    doc.add("Unschedulable", str(spec.unschedulable).lower())
    rows = [
        [
            c.type,
            c.status,
            rfc1123(c.last_heartbeat_time),
            rfc1123(c.last_transition_time),
            c.reason,
            c.message,
        ]
        for c in status.conditions
    ]
    if rows:
        doc.heading("Conditions")
        doc.table(
            ["Type", "Status", "LastHeartbeatTime", "LastTransitionTime", "Reason", "Message"],
            rows,
        )
    else:
        doc.add("Conditions", NONE)
    doc.heading("Addresses")
    for address in status.addresses:
        doc.add(address.type, address.address, 1)
    for label, values in (("Capacity", status.capacity), ("Allocatable", status.allocatable)):
        doc.heading(label)
        for name, quantity in sorted(values.items()):
            doc.add(name, quantity, 1)
    info = status.node_info
    doc.heading("System Info")
    for label, value in (
        ("Machine ID", info.machine_id),
        ("Boot ID", info.boot_id),
        ("Kernel Version", info.kernel_version),
        ("OS Image", info.os_image),
        ("Operating System", info.operating_system),
        ("Architecture", info.architecture),
        ("Container Runtime Version", info.container_runtime_version),
        ("Kubelet Version", info.kubelet_version),
        ("Kube-Proxy Version", info.kube_proxy_version),
    ):
        doc.add(label, value, 1)
    if spec.pod_cidr:
        doc.add("PodCIDR", spec.pod_cidr)
    pods = [p for p in related.pods if p.status.phase not in ("Succeeded", "Failed")]
    doc.heading(f"Non-terminated Pods ({len(pods)} in total)")
    if pods:
        doc.table(
            ["Namespace", "Name", "CPU Requests", "Memory Requests", "Age"],
            [
                [
                    p.metadata.namespace,
                    p.metadata.name,
                    _total(p.spec.containers, "cpu"),
                    _total(p.spec.containers, "memory"),
                    age(p.metadata.creation_timestamp),
                ]
                for p in pods
            ],
        )
    doc.heading("Allocated resources")
    allocatable = status.allocatable
    rows = []
    for resource in ("cpu", "memory"):
        requested = sum((_sum(p.spec.containers, resource, "requests") for p in pods), Fraction(0))
        limited = sum((_sum(p.spec.containers, resource, "limits") for p in pods), Fraction(0))
        rows.append(
            [
                resource,
                _with_percent(requested, allocatable.get(resource)),
                _with_percent(limited, allocatable.get(resource)),
            ]
        )
    doc.table(["Resource", "Requests", "Limits"], rows)


def _sum(containers: Iterable[core_pb2.Container], resource: str, which: str) -> Fraction:
    total = Fraction(0)
    for container in containers:
        values = getattr(container.resources, which)
        try:
            total += parse_quantity(values[resource]) if resource in values else 0
        except QuantityError:
            continue  # the server rejects these; never fail a describe over one
    return total


def _total(containers: Iterable[core_pb2.Container], resource: str) -> str:
    return format_quantity(_sum(containers, resource, "requests"))


def _with_percent(value: Fraction, capacity_text: str | None) -> str:
    shown = format_quantity(value)
    try:
        capacity = parse_quantity(capacity_text) if capacity_text else Fraction(0)
    except QuantityError:
        capacity = Fraction(0)
    if capacity > 0:
        return f"{shown} ({int(value * 100 / capacity)}%)"
    return shown


def _namespace(doc: Document, obj: Any, related: Related) -> None:
    ns = cast(core_pb2.Namespace, obj)
    doc.add("Status", ns.status.phase or "Active")


def _lease(doc: Document, obj: Any, related: Related) -> None:
    spec = obj.spec
    doc.add("Holder Identity", spec.holder_identity or NONE)
    if spec.HasField("lease_duration_seconds"):
        doc.add("Lease Duration Seconds", str(spec.lease_duration_seconds))
    doc.add("Acquire Time", rfc1123(spec.acquire_time))
    doc.add("Renew Time", rfc1123(spec.renew_time))


def _event(doc: Document, obj: Any, related: Related) -> None:
    event = cast(core_pb2.Event, obj)
    ref = event.involved_object
    doc.add(
        "Involved Object",
        f"{ref.kind}/{ref.name}" + (f" in {ref.namespace}" if ref.namespace else ""),
    )
    doc.add("Type", event.type or "Normal")
    doc.add("Reason", event.reason)
    doc.add("Message", event.message)
    doc.add("Source", event.source.component or event.reporting_component or NONE)
    doc.add("Count", str(event.count))
    doc.add("First Seen", rfc1123(event.first_timestamp))
    doc.add("Last Seen", rfc1123(event.last_timestamp))


def _config_map(doc: Document, obj: Any, related: Related) -> None:
    cm = cast(core_pb2.ConfigMap, obj)
    if cm.HasField("immutable"):
        doc.add("Immutable", "true" if cm.immutable else "false")
    # As kubectl: a ConfigMap is not secret, its values are shown.
    doc.heading("Data")
    for key in sorted(cm.data):
        doc.raw(f"{key}:")
        doc.raw("----")
        for line in cm.data[key].splitlines() or [""]:
            doc.raw(line)
        doc.raw("")
    doc.heading("BinaryData")
    for key in sorted(cm.binary_data):
        doc.raw(f"{key}: {len(cm.binary_data[key])} bytes")


def _secret(doc: Document, obj: Any, related: Related) -> None:
    """Key names and sizes, never values (as kubectl describe secret)."""
    secret = cast(core_pb2.Secret, obj)
    doc.add("Type", secret.type or "Opaque")
    if secret.HasField("immutable"):
        doc.add("Immutable", "true" if secret.immutable else "false")
    doc.heading("Data")
    for key in sorted(secret.data):
        doc.raw(f"{key}:  {len(secret.data[key])} bytes")


_DESCRIBERS: dict[str, Describer] = {
    kinds.POD.name: _pod,
    kinds.DEPLOYMENT.name: _deployment,
    kinds.REPLICA_SET.name: _replica_set,
    kinds.DAEMON_SET.name: _daemon_set,
    kinds.SERVICE.name: _service,
    kinds.ENDPOINT_SLICE.name: _endpoint_slice,
    kinds.NODE.name: _node,
    kinds.NAMESPACE.name: _namespace,
    kinds.LEASE.name: _lease,
    kinds.EVENT.name: _event,
    kinds.CONFIG_MAP.name: _config_map,
    kinds.SECRET.name: _secret,
    kinds.JOB.name: _job,
    kinds.CRON_JOB.name: _cron_job,
}
