"""Pod status from the pod's spec and what the runtime reports, as Kubernetes
computes it (phase, conditions, per-container states, restart counts)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from kubeling.api.objects import now
from kubeling.kubelet.runtime_state import ContainerInstance, RuntimePod
from kubeling.v1 import core_pb2, meta_pb2

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class Waiting:
    """Why a container is not running, as the pod's worker last saw it."""

    reason: str
    message: str = ""


def _stamp(ns: int) -> Timestamp:
    stamp = Timestamp()
    if ns:
        stamp.FromNanoseconds(ns)
    return stamp


def _terminated(instance: ContainerInstance) -> core_pb2.ContainerStateTerminated:
    reason = instance.reason or ("Completed" if instance.exit_code == 0 else "Error")
    return core_pb2.ContainerStateTerminated(
        exit_code=instance.exit_code,
        reason=reason,
        message=instance.message,
        started_at=_stamp(instance.started_at),
        finished_at=_stamp(instance.finished_at),
        container_id=f"containerd://{instance.id}",
    )


@dataclass
class StatusInputs:
    pod: core_pb2.Pod
    runtime: RuntimePod | None
    host_ip: str
    readiness: Callable[[str], bool]  # container name -> ready (probe result)
    started: Callable[[str], bool]  # container name -> startup done
    waiting: Callable[[str], Waiting | None]  # container name -> worker's reason


def container_status(
    spec: core_pb2.Container, inputs: StatusInputs, sandbox_id: str | None
) -> tuple[core_pb2.ContainerStatus, str]:
    """The status and a phase class: running, succeeded, failed (stopped), waiting
    or restarting (stopped and waiting to start again)."""
    status = core_pb2.ContainerStatus(name=spec.name, image=spec.image)
    runtime = inputs.runtime
    instances = runtime.instances(spec.name, sandbox_id) if runtime else []
    latest = instances[0] if instances else None
    waiting = inputs.waiting(spec.name)
    if latest is not None:
        status.restart_count = latest.attempt
        status.container_id = f"containerd://{latest.id}"
        status.image_id = latest.image_ref
        if len(instances) > 1 and instances[1].exited:
            status.last_state.terminated.CopyFrom(_terminated(instances[1]))
    if latest is not None and latest.running:
        status.state.running.started_at.CopyFrom(_stamp(latest.started_at))
        status.ready = inputs.readiness(spec.name)
        status.started = inputs.started(spec.name)
        return status, "running"
    status.started = False
    if latest is not None and latest.exited:
        if waiting is not None:
            # Exited and about to start again: Kubernetes shows it waiting
            # (CrashLoopBackOff) with the exit in lastState.
            status.last_state.terminated.CopyFrom(_terminated(latest))
            status.state.waiting.reason = waiting.reason
            status.state.waiting.message = waiting.message
            return status, "restarting"
        status.state.terminated.CopyFrom(_terminated(latest))
        return status, "succeeded" if latest.exit_code == 0 else "failed"
    status.state.waiting.reason = waiting.reason if waiting else "ContainerCreating"
    status.state.waiting.message = waiting.message if waiting else ""
    return status, "waiting"


def compute_status(inputs: StatusInputs) -> core_pb2.PodStatus:
    pod, runtime = inputs.pod, inputs.runtime
    previous = pod.status
    status = core_pb2.PodStatus(host_ip=inputs.host_ip, qos_class=previous.qos_class)
    sandbox = runtime.sandbox if runtime else None
    sandbox_id = sandbox.id if sandbox else None
    # A hostNetwork pod's address is its node's (the runtime reports none for it).
    pod_ip = inputs.host_ip if pod.spec.host_network else sandbox.ip if sandbox else ""
    if sandbox is not None and sandbox.ready and pod_ip:
        status.pod_ip = pod_ip
        status.pod_ips.add(ip=pod_ip)
    if previous.HasField("start_time"):
        status.start_time.CopyFrom(previous.start_time)
    else:
        status.start_time.CopyFrom(now())

    init_done = True
    init_failed = False
    for spec in pod.spec.init_containers:
        cstatus, kind = container_status(spec, inputs, sandbox_id)
        cstatus.ready = kind == "succeeded"
        status.init_container_statuses.append(cstatus)
        if kind != "succeeded":
            init_done = False
            if kind == "failed" and pod.spec.restart_policy == "Never":
                init_failed = True
            if cstatus.state.HasField("waiting") and not inputs.waiting(spec.name):
                cstatus.state.waiting.reason = "PodInitializing"

    counts = {"running": 0, "succeeded": 0, "failed": 0, "waiting": 0, "restarting": 0}
    for spec in pod.spec.containers:
        cstatus, kind = container_status(spec, inputs, sandbox_id)
        if not init_done and kind == "waiting" and not inputs.waiting(spec.name):
            cstatus.state.waiting.reason = "PodInitializing"
        status.container_statuses.append(cstatus)
        counts[kind] += 1

    status.phase = _phase(pod, init_done, init_failed, counts)
    if previous.phase in TERMINAL_PHASES:
        status.phase = previous.phase  # a finished pod never runs again
    all_ready = bool(status.container_statuses) and all(c.ready for c in status.container_statuses)
    conditions = [
        ("PodScheduled", True),
        ("Initialized", init_done),
        ("ContainersReady", all_ready and init_done),
        ("Ready", all_ready and init_done),
    ]
    for kind, value in conditions:
        status.conditions.append(_condition(previous, kind, value))
    return status


def _phase(pod: core_pb2.Pod, init_done: bool, init_failed: bool, counts: dict[str, int]) -> str:
    if init_failed:
        return "Failed"
    if not init_done:
        return "Pending"
    if counts["waiting"]:
        return "Pending"
    if counts["running"]:
        return "Running"
    stopped = counts["succeeded"] + counts["failed"] + counts["restarting"]
    if stopped == 0:
        return "Pending"
    policy = pod.spec.restart_policy or "Always"
    if policy == "Always" or counts["restarting"]:
        return "Running"
    if counts["failed"] == 0:
        return "Succeeded"
    return "Failed" if policy == "Never" else "Running"


def _condition(previous: core_pb2.PodStatus, kind: str, value: bool) -> meta_pb2.Condition:
    text = "True" if value else "False"
    condition = meta_pb2.Condition(type=kind, status=text)
    before = next((c for c in previous.conditions if c.type == kind), None)
    if before is not None and before.status == text:
        condition.last_transition_time.CopyFrom(before.last_transition_time)
    else:
        condition.last_transition_time.CopyFrom(now())
    if kind in ("ContainersReady", "Ready") and not value:
        condition.reason = "ContainersNotReady"
    return condition
