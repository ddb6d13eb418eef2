"""Unit tests for kubeling.master.defaults (server-side defaulting)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from kubeling.api import kinds
from kubeling.master.defaults import apply_defaults, image_tag, qos_class
from kubeling.v1 import apps_pb2, core_pb2, discovery_pb2


def parse(kind: kinds.Kind, data: dict[str, Any]) -> Any:
    return json_format.ParseDict(data, kind.message())


def defaulted(kind: kinds.Kind, data: dict[str, Any]) -> Any:
    obj = parse(kind, data)
    apply_defaults(kind, obj)
    return obj


def as_dict(obj: Message) -> dict[str, Any]:
    return json_format.MessageToDict(obj)


def pod(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": [{"name": "app", "image": "nginx:1.25"}]}
    body.update(spec)
    return {"metadata": {"name": "p", "namespace": "default"}, "spec": body}


def template(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": [{"name": "app", "image": "nginx:1.25"}]}
    body.update(spec)
    return {"metadata": {"labels": {"app": "web"}}, "spec": body}


# ---------------------------------------------------------------------- Pod


def test_pod_spec_defaults() -> None:
    obj: core_pb2.Pod = defaulted(kinds.POD, pod())
    assert obj.spec.restart_policy == "Always"
    assert obj.spec.HasField("termination_grace_period_seconds")
    assert obj.spec.termination_grace_period_seconds == 30
    assert obj.spec.scheduler_name == "default-scheduler"
    assert obj.spec.containers[0].image_pull_policy == "IfNotPresent"


def test_pod_defaults_keep_user_values() -> None:
    obj: core_pb2.Pod = defaulted(
        kinds.POD,
        pod(
            restartPolicy="Never",
            terminationGracePeriodSeconds=0,
            schedulerName="mine",
            containers=[{"name": "a", "image": "nginx", "imagePullPolicy": "Never"}],
        ),
    )
    assert obj.spec.restart_policy == "Never"
    assert obj.spec.termination_grace_period_seconds == 0  # explicit 0 is kept
    assert obj.spec.scheduler_name == "mine"
    assert obj.spec.containers[0].image_pull_policy == "Never"


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("nginx", "Always"),
        ("nginx:latest", "Always"),
        ("docker.io/library/nginx", "Always"),
        ("localhost:5000/app", "Always"),  # the ':' belongs to the registry port
        ("localhost:5000/app:v2", "IfNotPresent"),
        ("nginx:1.25", "IfNotPresent"),
        ("nginx@sha256:" + "a" * 64, "IfNotPresent"),
        ("nginx:latest@sha256:" + "a" * 64, "Always"),
    ],
)
def test_image_pull_policy_from_tag(image: str, policy: str) -> None:
    obj: core_pb2.Pod = defaulted(
        kinds.POD,
        pod(
            containers=[{"name": "a", "image": image}],
            initContainers=[{"name": "i", "image": image}],
        ),
    )
    assert obj.spec.containers[0].image_pull_policy == policy
    assert obj.spec.init_containers[0].image_pull_policy == policy


def test_image_tag() -> None:
    assert image_tag("busybox") == "latest"
    assert image_tag("registry.local:443/team/busybox:1.36") == "1.36"
    assert image_tag("busybox@sha256:abc") == ""


def test_container_port_protocol_and_probe_defaults() -> None:
    obj: core_pb2.Pod = defaulted(
        kinds.POD,
        pod(
            containers=[
                {
                    "name": "app",
                    "image": "nginx:1.25",
                    "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}],
                    "livenessProbe": {"httpGet": {"port": 80}},
                    "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 5},
                    "startupProbe": {"exec": {"command": ["true"]}, "failureThreshold": 30},
                }
            ]
        ),
    )
    ctr = obj.spec.containers[0]
    assert [p.protocol for p in ctr.ports] == ["TCP", "UDP"]
    assert as_dict(ctr.liveness_probe) == {
        "httpGet": {"path": "/", "port": 80.0, "scheme": "HTTP"},
        "timeoutSeconds": 1,
        "periodSeconds": 10,
        "successThreshold": 1,
        "failureThreshold": 3,
    }
    assert ctr.readiness_probe.period_seconds == 5
    assert ctr.readiness_probe.timeout_seconds == 1
    assert not ctr.readiness_probe.HasField("http_get")
    assert ctr.startup_probe.failure_threshold == 30
    assert ctr.startup_probe.success_threshold == 1


def test_http_probe_keeps_path_and_scheme() -> None:
    probe = {"httpGet": {"port": 443, "path": "/healthz", "scheme": "HTTPS"}}
    obj: core_pb2.Pod = defaulted(
        kinds.POD, pod(containers=[{"name": "a", "image": "x:1", "livenessProbe": probe}])
    )
    assert obj.spec.containers[0].liveness_probe.http_get.path == "/healthz"
    assert obj.spec.containers[0].liveness_probe.http_get.scheme == "HTTPS"


def test_requests_default_to_limits() -> None:
    resources = {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "100m"}}
    obj: core_pb2.Pod = defaulted(
        kinds.POD,
        pod(
            containers=[{"name": "a", "image": "x:1", "resources": resources}],
            initContainers=[{"name": "i", "image": "x:1", "resources": {"limits": {"cpu": "1"}}}],
        ),
    )
    assert dict(obj.spec.containers[0].resources.requests) == {"cpu": "100m", "memory": "128Mi"}
    assert dict(obj.spec.init_containers[0].resources.requests) == {"cpu": "1"}


@pytest.mark.parametrize(
    ("containers", "expected"),
    [
        ([{}], "BestEffort"),
        ([{"requests": {"cpu": "0"}}], "BestEffort"),  # zero counts as unset
        ([{"requests": {"example.com/gpu": "1"}}], "BestEffort"),  # only cpu/memory count
        ([{"limits": {"cpu": "1", "memory": "1Gi"}}], "Guaranteed"),  # requests from limits
        (
            [{"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}],
            "Guaranteed",
        ),
        ([{"limits": {"cpu": "1"}}], "Burstable"),  # memory unlimited
        ([{"requests": {"memory": "64Mi"}}], "Burstable"),
        (
            [{"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}}],
            "Burstable",
        ),
        (
            # One unconstrained container makes the whole pod Burstable.
            [{"limits": {"cpu": "1", "memory": "1Gi"}}, {}],
            "Burstable",
        ),
        (
            [{"limits": {"cpu": "1", "memory": "1Gi"}}, {"limits": {"cpu": "2", "memory": "1Gi"}}],
            "Guaranteed",
        ),
    ],
)
def test_qos_class(containers: list[dict[str, Any]], expected: str) -> None:
    spec = [{"name": f"c{i}", "image": "x:1", "resources": r} for i, r in enumerate(containers)]
    obj: core_pb2.Pod = defaulted(kinds.POD, pod(containers=spec))
    assert obj.status.qos_class == expected


def test_qos_class_counts_init_containers() -> None:
    guaranteed = {"limits": {"cpu": "1", "memory": "1Gi"}}
    spec = parse(
        kinds.POD,
        pod(
            containers=[{"name": "a", "image": "x:1", "resources": guaranteed}],
            initContainers=[{"name": "i", "image": "x:1", "resources": {"limits": {"cpu": "1"}}}],
        ),
    ).spec
    # Without requests copied from limits, the limits alone decide Guaranteed-ness.
    assert qos_class(spec) == "Burstable"


def test_defaults_are_idempotent() -> None:
    once: core_pb2.Pod = defaulted(
        kinds.POD,
        pod(containers=[{"name": "a", "image": "x", "livenessProbe": {"tcpSocket": {"port": 1}}}]),
    )
    twice = core_pb2.Pod()
    twice.CopyFrom(once)
    apply_defaults(kinds.POD, twice)
    assert twice == once


def test_wrong_message_type_is_refused() -> None:
    with pytest.raises(TypeError):
        apply_defaults(kinds.POD, core_pb2.Service())


# ------------------------------------------------------------------ Service


def test_service_defaults() -> None:
    obj: core_pb2.Service = defaulted(
        kinds.SERVICE,
        {
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"app": "web"},
                "ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "targetPort": "dns"}],
            },
        },
    )
    assert as_dict(obj.spec) == {
        "type": "ClusterIP",
        "selector": {"app": "web"},
        "ports": [
            {"port": 80, "protocol": "TCP", "targetPort": 80.0},
            {"port": 53, "protocol": "UDP", "targetPort": "dns"},
        ],
        "sessionAffinity": "None",
        "internalTrafficPolicy": "Cluster",
    }


@pytest.mark.parametrize("target", [0, ""])
def test_service_zero_target_port_means_unset(target: Any) -> None:
    obj: core_pb2.Service = defaulted(
        kinds.SERVICE, {"spec": {"ports": [{"port": 8080, "targetPort": target}]}}
    )
    assert obj.spec.ports[0].target_port.number_value == 8080


def test_node_port_service_defaults() -> None:
    obj: core_pb2.Service = defaulted(
        kinds.SERVICE, {"spec": {"type": "NodePort", "ports": [{"port": 80}]}}
    )
    assert obj.spec.type == "NodePort"
    assert obj.spec.external_traffic_policy == "Cluster"
    assert obj.spec.internal_traffic_policy == "Cluster"


def test_cluster_ip_service_has_no_external_traffic_policy() -> None:
    obj: core_pb2.Service = defaulted(kinds.SERVICE, {"spec": {"ports": [{"port": 80}]}})
    assert obj.spec.external_traffic_policy == ""


def test_client_ip_affinity_timeout() -> None:
    obj: core_pb2.Service = defaulted(
        kinds.SERVICE, {"spec": {"sessionAffinity": "ClientIP", "ports": [{"port": 80}]}}
    )
    assert obj.spec.session_affinity_config.client_ip.timeout_seconds == 10800
    kept: core_pb2.Service = defaulted(
        kinds.SERVICE,
        {
            "spec": {
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            }
        },
    )
    assert kept.spec.session_affinity_config.client_ip.timeout_seconds == 60


def test_no_affinity_config_without_client_ip() -> None:
    obj: core_pb2.Service = defaulted(kinds.SERVICE, {"spec": {"ports": [{"port": 80}]}})
    assert not obj.spec.HasField("session_affinity_config")


# ---------------------------------------------------------------- Workloads


def test_replica_set_defaults() -> None:
    obj: apps_pb2.ReplicaSet = defaulted(
        kinds.REPLICA_SET,
        {"spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template()}},
    )
    assert obj.spec.HasField("replicas")
    assert obj.spec.replicas == 1
    assert obj.spec.template.spec.restart_policy == "Always"
    assert obj.spec.template.spec.termination_grace_period_seconds == 30
    assert obj.spec.template.spec.containers[0].image_pull_policy == "IfNotPresent"


def test_replicas_zero_is_kept() -> None:
    obj: apps_pb2.ReplicaSet = defaulted(kinds.REPLICA_SET, {"spec": {"replicas": 0}})
    assert obj.spec.replicas == 0


def test_template_requests_are_not_copied_from_limits() -> None:
    # As in Kubernetes: only Pods get requests from limits, not templates.
    tmpl = template(
        containers=[{"name": "a", "image": "x:1", "resources": {"limits": {"cpu": "1"}}}]
    )
    obj: apps_pb2.ReplicaSet = defaulted(kinds.REPLICA_SET, {"spec": {"template": tmpl}})
    assert dict(obj.spec.template.spec.containers[0].resources.requests) == {}


def test_deployment_defaults() -> None:
    obj: apps_pb2.Deployment = defaulted(
        kinds.DEPLOYMENT,
        {"spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template()}},
    )
    spec = as_dict(obj.spec)
    assert spec["replicas"] == 1
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
    }
    assert spec["revisionHistoryLimit"] == 10
    assert spec["progressDeadlineSeconds"] == 600
    assert spec["template"]["spec"]["restartPolicy"] == "Always"
    assert spec["template"]["spec"]["schedulerName"] == "default-scheduler"


def test_deployment_keeps_partial_rolling_update() -> None:
    obj: apps_pb2.Deployment = defaulted(
        kinds.DEPLOYMENT,
        {"spec": {"strategy": {"rollingUpdate": {"maxSurge": 0}}, "revisionHistoryLimit": 0}},
    )
    rolling = as_dict(obj.spec.strategy.rolling_update)
    assert rolling == {"maxSurge": 0.0, "maxUnavailable": "25%"}
    assert obj.spec.revision_history_limit == 0


def test_recreate_deployment_gets_no_rolling_update() -> None:
    obj: apps_pb2.Deployment = defaulted(
        kinds.DEPLOYMENT, {"spec": {"strategy": {"type": "Recreate"}}}
    )
    assert not obj.spec.strategy.HasField("rolling_update")


def test_daemon_set_defaults() -> None:
    obj: apps_pb2.DaemonSet = defaulted(kinds.DAEMON_SET, {"spec": {"template": template()}})
    assert as_dict(obj.spec.update_strategy) == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1.0, "maxSurge": 0.0},
    }
    assert obj.spec.revision_history_limit == 10
    assert obj.spec.template.spec.restart_policy == "Always"


def test_on_delete_daemon_set_gets_no_rolling_update() -> None:
    obj: apps_pb2.DaemonSet = defaulted(
        kinds.DAEMON_SET, {"spec": {"updateStrategy": {"type": "OnDelete"}}}
    )
    assert obj.spec.update_strategy.type == "OnDelete"
    assert not obj.spec.update_strategy.HasField("rolling_update")


# -------------------------------------------------------------------- others


def test_endpoint_slice_port_protocol() -> None:
    obj: discovery_pb2.EndpointSlice = defaulted(
        kinds.ENDPOINT_SLICE,
        {"addressType": "IPv4", "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]},
    )
    assert [p.protocol for p in obj.ports] == ["TCP", "UDP"]
    assert obj.address_type == "IPv4"


def test_namespace_defaults() -> None:
    obj: core_pb2.Namespace = defaulted(kinds.NAMESPACE, {"metadata": {"name": "team"}})
    assert obj.status.phase == "Active"
    assert list(obj.spec.finalizers) == ["kubernetes"]
    kept: core_pb2.Namespace = defaulted(
        kinds.NAMESPACE,
        {"spec": {"finalizers": ["example.com/cleanup"]}, "status": {"phase": "Terminating"}},
    )
    assert kept.status.phase == "Terminating"
    assert list(kept.spec.finalizers) == ["example.com/cleanup"]


def test_terminating_namespace_finalizer_is_not_restored() -> None:
    # The namespace controller clears the finalizer to release a deleted namespace.
    obj: core_pb2.Namespace = defaulted(
        kinds.NAMESPACE,
        {"metadata": {"name": "team", "deletionTimestamp": "2024-01-01T00:00:00Z"}},
    )
    assert list(obj.spec.finalizers) == []


def test_event_defaults() -> None:
    obj: core_pb2.Event = defaulted(kinds.EVENT, {"reason": "Started"})
    assert obj.type == "Normal"
    assert obj.count == 1
    kept: core_pb2.Event = defaulted(kinds.EVENT, {"type": "Warning", "count": 4})
    assert (kept.type, kept.count) == ("Warning", 4)


def test_node_and_lease_are_untouched() -> None:
    node = parse(kinds.NODE, {"metadata": {"name": "n1"}})
    apply_defaults(kinds.NODE, node)
    assert node == parse(kinds.NODE, {"metadata": {"name": "n1"}})
    lease = parse(kinds.LEASE, {"metadata": {"name": "l"}})
    apply_defaults(kinds.LEASE, lease)
    assert lease == parse(kinds.LEASE, {"metadata": {"name": "l"}})
