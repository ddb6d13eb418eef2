"""Unit tests for kubeling.master.validation.

Objects are written as the Kubernetes-shaped dicts users put in YAML, defaulted
as the registry does, then validated; the tests pin the exact field paths.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from google.protobuf import json_format

from kubeling.api import kinds
from kubeling.api.errors import FieldViolation
from kubeling.master.defaults import apply_defaults
from kubeling.master.validation import NODE_PORT_RANGE, validate, validate_update
from kubeling.v1 import core_pb2

# ------------------------------------------------------------------ helpers


def build(kind: kinds.Kind, data: dict[str, Any]) -> Any:
    obj = json_format.ParseDict(data, kind.message())
    apply_defaults(kind, obj)
    return obj


def check(kind: kinds.Kind, data: dict[str, Any]) -> list[FieldViolation]:
    return validate(kind, build(kind, data))


def paths(kind: kinds.Kind, data: dict[str, Any]) -> list[str]:
    return [v.field for v in check(kind, data)]


def describe(kind: kinds.Kind, data: dict[str, Any]) -> dict[str, str]:
    return {v.field: v.description for v in check(kind, data)}


def changed(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of `data` with one nested key (a.b.0.c) set."""
    result = copy.deepcopy(data)
    target: Any = result
    parts = dotted.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target.setdefault(part, {})
    last = parts[-1]
    if last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return result


POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web-0", "namespace": "default", "labels": {"app": "web"}},
    "spec": {
        "initContainers": [{"name": "init", "image": "busybox:1.36", "command": ["true"]}],
        "containers": [
            {
                "name": "web",
                "image": "nginx:1.25",
                "ports": [{"name": "http", "containerPort": 80}],
                "env": [{"name": "MODE", "value": "prod"}],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "64Mi"},
                    "limits": {"cpu": "500m", "memory": "128Mi", "example.com/gpu": "1"},
                },
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                "readinessProbe": {"tcpSocket": {"port": 80}, "successThreshold": 2},
                "startupProbe": {"exec": {"command": ["cat", "/ready"]}},
            },
            {"name": "sidecar", "image": "registry.local:5000/team/agent@sha256:" + "a" * 64},
        ],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "zone", "operator": "In", "values": ["a", "b"]},
                                {"key": "cores", "operator": "Gt", "values": ["4"]},
                                {"key": "gpu", "operator": "Exists"},
                            ],
                            "matchFields": [
                                {"key": "metadata.name", "operator": "NotIn", "values": ["n9"]}
                            ],
                        }
                    ]
                }
            }
        },
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"},
            {
                "key": "node.kubernetes.io/unreachable",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
            {"operator": "Exists"},
        ],
    },
}

TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"app": "web", "tier": "frontend"}},
    "spec": {
        "containers": [
            {
                "name": "web",
                "image": "nginx:1.25",
                "ports": [{"containerPort": 80, "name": "http"}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 80}},
            }
        ]
    },
}

DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {
        "replicas": 3,
        "selector": {
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["frontend"]}],
        },
        "template": TEMPLATE,
    },
}

REPLICA_SET: dict[str, Any] = {
    "metadata": {"name": "web-7d9f", "namespace": "default"},
    "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": TEMPLATE},
}

DAEMON_SET: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "DaemonSet",
    "metadata": {"name": "agent", "namespace": "kube-system"},
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "template": TEMPLATE,
        "updateStrategy": {"rollingUpdate": {"maxUnavailable": "10%"}},
    },
}

SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {
        "selector": {"app": "web"},
        "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "metrics", "port": 9090, "targetPort": 9090},
            {"name": "dns", "port": 80, "protocol": "UDP"},
        ],
    },
}

ENDPOINT_SLICE: dict[str, Any] = {
    "metadata": {
        "name": "web-abc12",
        "namespace": "default",
        "labels": {"kubernetes.io/service-name": "web"},
    },
    "addressType": "IPv4",
    "endpoints": [
        {
            "addresses": ["10.244.1.5"],
            "conditions": {"ready": True},
            "nodeName": "node-1",
            "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "default"},
        },
    ],
    "ports": [{"name": "http", "port": 80}, {"name": "", "port": 9090}],
}

NODE: dict[str, Any] = {
    "metadata": {"name": "node-1.example.com", "labels": {"kubernetes.io/hostname": "node-1"}},
    "spec": {
        "podCIDR": "10.244.1.0/24",
        "podCIDRs": ["10.244.1.0/24"],
        "taints": [
            {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
            {"key": "dedicated", "value": "gpu", "effect": "NoExecute"},
        ],
    },
    "status": {
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "3800m", "memory": "7.5Gi", "pods": "110"},
    },
}


# ----------------------------------------------------------- valid objects


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        (kinds.POD, POD),
        (kinds.DEPLOYMENT, DEPLOYMENT),
        (kinds.REPLICA_SET, REPLICA_SET),
        (kinds.DAEMON_SET, DAEMON_SET),
        (kinds.SERVICE, SERVICE),
        (kinds.ENDPOINT_SLICE, ENDPOINT_SLICE),
        (kinds.NODE, NODE),
        (kinds.NAMESPACE, {"metadata": {"name": "team-a"}}),
        (
            kinds.LEASE,
            {
                "metadata": {"name": "node-1", "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40},
            },
        ),
        (
            kinds.EVENT,
            {
                "metadata": {"name": "web-0.17a", "namespace": "default"},
                "involvedObject": {"kind": "Pod", "name": "web-0", "namespace": "default"},
                "reason": "Scheduled",
            },
        ),
        (
            kinds.SERVICE,
            {
                "metadata": {"name": "db", "namespace": "default"},
                "spec": {"clusterIP": "None", "selector": {"app": "db"}},
            },
        ),
        (
            kinds.SERVICE,
            {
                "metadata": {"name": "np", "namespace": "default"},
                "spec": {
                    "type": "NodePort",
                    "clusterIP": "10.96.0.10",
                    "sessionAffinity": "ClientIP",
                    "ports": [{"port": 80, "nodePort": 30080}],
                },
            },
        ),
        (
            kinds.DEPLOYMENT,
            {
                **DEPLOYMENT,
                "spec": {
                    **DEPLOYMENT["spec"],
                    "strategy": {"type": "Recreate"},
                    "minReadySeconds": 5,
                },
            },
        ),
    ],
)
def test_valid_objects(kind: kinds.Kind, data: dict[str, Any]) -> None:
    assert check(kind, data) == []


def test_wrong_message_type_is_refused() -> None:
    with pytest.raises(TypeError):
        validate(kinds.SERVICE, core_pb2.Pod())


# ----------------------------------------------------------------- metadata


def test_name_required() -> None:
    assert describe(kinds.POD, changed(POD, "metadata.name", "")) == {
        "metadata.name": "Required value: name or generateName is required"
    }


@pytest.mark.parametrize(
    ("kind", "data", "name", "ok"),
    [
        (kinds.POD, POD, "web.v1", True),
        (kinds.POD, POD, "Web", False),
        (kinds.SERVICE, SERVICE, "web.v1", False),  # Service names are DNS labels
        (kinds.SERVICE, SERVICE, "a" * 64, False),
        (kinds.NAMESPACE, {}, "team.a", False),
        (kinds.NODE, {}, "node-1.example.com", True),
        (kinds.DEPLOYMENT, DEPLOYMENT, "web-" + "a" * 250, False),
    ],
)
def test_name_format(kind: kinds.Kind, data: dict[str, Any], name: str, ok: bool) -> None:
    data = changed(data, "metadata.name", name)
    if not kind.namespaced:
        data["metadata"].pop("namespace", None)
    found = paths(kind, data)
    assert found == ([] if ok else ["metadata.name"])


def test_namespace_checks() -> None:
    assert paths(kinds.POD, changed(POD, "metadata.namespace", "")) == ["metadata.namespace"]
    assert paths(kinds.POD, changed(POD, "metadata.namespace", "Bad_NS")) == ["metadata.namespace"]
    assert describe(kinds.NODE, {"metadata": {"name": "n", "namespace": "default"}}) == {
        "metadata.namespace": "Forbidden: not allowed on this type"
    }


def test_labels_and_annotations() -> None:
    data = changed(POD, "metadata.labels", {"app": "web", "bad key": "x", "ok": "bad value!"})
    data["metadata"]["annotations"] = {"example.com/fine": "anything at all", "/nope": "x"}
    errs = check(kinds.POD, data)
    assert [v.field for v in errs] == [
        "metadata.labels",
        "metadata.labels",
        "metadata.annotations",
    ]
    assert errs[0].description.startswith('Invalid value: "bad key": name part must consist')
    assert errs[1].description.startswith('Invalid value: "bad value!": a valid label must')


def test_annotation_total_size() -> None:
    data = changed(POD, "metadata.annotations", {"big": "x" * (256 * 1024)})
    assert describe(kinds.POD, data) == {
        "metadata.annotations": "Too long: must have at most 262144 bytes"
    }
    # Exactly at the limit is fine.
    data = changed(POD, "metadata.annotations", {"big": "x" * (256 * 1024 - 3)})
    assert check(kinds.POD, data) == []


def test_finalizers() -> None:
    data = changed(POD, "metadata.finalizers", ["example.com/keep", "kubernetes", "mine", "a/b/c"])
    assert paths(kinds.POD, data) == ["metadata.finalizers[2]", "metadata.finalizers[3]"]


def test_owner_references() -> None:
    data = changed(
        POD,
        "metadata.ownerReferences",
        [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "a",
                "uid": "1",
                "controller": True,
            },
            {"kind": "ReplicaSet", "name": "", "controller": True},
        ],
    )
    assert paths(kinds.POD, data) == [
        "metadata.ownerReferences[1].apiVersion",
        "metadata.ownerReferences[1].name",
        "metadata.ownerReferences[1].uid",
        "metadata.ownerReferences",
    ]


# ------------------------------------------------------------------ Pod spec


def container(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "c", "image": "nginx:1.25"}
    body.update(fields)
    return body


def pod_with(*containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": list(containers)}
    body.update(spec)
    return {"metadata": {"name": "p", "namespace": "default"}, "spec": body}


def test_containers_required() -> None:
    assert describe(kinds.POD, pod_with()) == {"spec.containers": "Required value"}


def test_container_names() -> None:
    data = pod_with(
        container(name="web"),
        container(name="Web_1"),
        container(name="web"),
        container(name="init"),
        container(name=""),
        initContainers=[container(name="init")],
    )
    errs = check(kinds.POD, data)
    assert [v.field for v in errs] == [
        "spec.containers[1].name",
        "spec.containers[2].name",
        "spec.containers[3].name",
        "spec.containers[4].name",
    ]
    assert errs[1].description == 'Duplicate value: "web"'
    assert errs[2].description == 'Duplicate value: "init"'  # unique across init containers too
    assert errs[3].description == "Required value"


def test_image_and_pull_policy() -> None:
    data = pod_with(
        container(name="a", image=""),
        container(name="b", image="nginx :1"),
        container(name="c", imagePullPolicy="Sometimes"),
    )
    found = describe(kinds.POD, data)
    assert found == {
        "spec.containers[0].image": "Required value",
        "spec.containers[1].image": 'Invalid value: "nginx :1": must not contain whitespace',
        "spec.containers[2].imagePullPolicy": 'Unsupported value: "Sometimes": supported '
        'values: "Always", "IfNotPresent", "Never"',
    }


def test_restart_policy() -> None:
    assert describe(kinds.POD, pod_with(container(), restartPolicy="Sometimes")) == {
        "spec.restartPolicy": 'Unsupported value: "Sometimes": supported values: "Always", '
        '"OnFailure", "Never"'
    }


def test_container_ports() -> None:
    data = pod_with(
        container(
            ports=[
                {"name": "http", "containerPort": 80},
                {"name": "http", "containerPort": 81},
                {"containerPort": 0},
                {"containerPort": 70000, "hostPort": 70000},
                {"name": "8080", "containerPort": 8080, "protocol": "ICMP"},
                {"containerPort": 53, "hostPort": 53, "protocol": "UDP"},
            ]
        )
    )
    errs = check(kinds.POD, data)
    assert [v.field for v in errs] == [
        "spec.containers[0].ports[1].name",
        "spec.containers[0].ports[2].containerPort",
        "spec.containers[0].ports[3].containerPort",
        "spec.containers[0].ports[3].hostPort",
        "spec.containers[0].ports[4].name",
        "spec.containers[0].ports[4].protocol",
    ]
    assert errs[0].description == 'Duplicate value: "http"'
    assert errs[2].description == "Invalid value: 70000: must be between 1 and 65535, inclusive"
    assert errs[4].description == 'Invalid value: "8080": must contain at least one letter (a-z)'


def test_port_names_may_repeat_across_containers() -> None:
    data = pod_with(
        container(name="a", ports=[{"name": "http", "containerPort": 80}]),
        container(name="b", ports=[{"name": "http", "containerPort": 81}]),
    )
    assert check(kinds.POD, data) == []


def test_host_network_ports() -> None:
    data = pod_with(
        container(ports=[{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]),
        hostNetwork=True,
    )
    assert paths(kinds.POD, data) == ["spec.containers[0].ports[0].containerPort"]


def test_env() -> None:
    data = pod_with(
        container(
            env=[
                {"name": "OK", "value": "1"},
                {"name": "my.setting-x", "value": "1"},
                {"name": ""},
                {"name": "A=B"},
                {"name": "POD", "value": "x", "valueFrom": {"fieldRef": {}}},
            ]
        )
    )
    assert paths(kinds.POD, data) == [
        "spec.containers[0].env[2].name",
        "spec.containers[0].env[3].name",
        "spec.containers[0].env[4].valueFrom",
        "spec.containers[0].env[4].valueFrom.fieldRef.fieldPath",
    ]


def test_resources() -> None:
    data = pod_with(
        container(
            resources={
                "limits": {"cpu": "1", "memory": "abc", "pods": "1", "example.com/gpu": "2"},
                "requests": {
                    "cpu": "2",
                    "ephemeral-storage": "-1Gi",
                    "example.com/gpu": "1",
                    "example.com/fpga": "1",
                    "bad name": "1",
                    # Given, so not defaulted from the limits (which would repeat errors).
                    "memory": "64Mi",
                    "pods": "1",
                },
            }
        )
    )
    found = describe(kinds.POD, data)
    base = "spec.containers[0].resources"
    assert found == {
        f"{base}.limits[memory]": 'Invalid value: "abc": quantities must match the regular '
        "expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
        f"{base}.limits[pods]": 'Invalid value: "pods": must be a standard resource for containers',
        f"{base}.requests[bad name]": found[f"{base}.requests[bad name]"],
        f"{base}.requests[pods]": 'Invalid value: "pods": must be a standard resource for '
        "containers",
        f"{base}.requests[ephemeral-storage]": 'Invalid value: "-1Gi": must be greater than '
        "or equal to 0",
        f"{base}.requests[cpu]": 'Invalid value: "2": must be less than or equal to cpu limit of 1',
        f"{base}.limits[example.com/fpga]": "Required value: Limit must be set for non "
        "overcommitable resources",
        f"{base}.requests[example.com/gpu]": 'Invalid value: "1": must be equal to '
        "example.com/gpu limit of 2",
    }
    assert found[f"{base}.requests[bad name]"].startswith('Invalid value: "bad name":')


def test_request_equal_to_limit_in_other_units() -> None:
    res = {
        "limits": {"cpu": "1", "memory": "1Gi"},
        "requests": {"cpu": "1000m", "memory": "1024Mi"},
    }
    assert check(kinds.POD, pod_with(container(resources=res))) == []


def test_extended_resources_must_be_whole() -> None:
    res = {"limits": {"example.com/gpu": "500m"}}
    assert paths(kinds.POD, pod_with(container(resources=res))) == [
        "spec.containers[0].resources.limits[example.com/gpu]",
        "spec.containers[0].resources.requests[example.com/gpu]",  # defaulted from the limit
    ]


def test_probe_handlers() -> None:
    data = pod_with(
        container(
            livenessProbe={"initialDelaySeconds": 1},
            readinessProbe={
                "exec": {"command": ["x"]},
                "httpGet": {"port": 80},
                "tcpSocket": {"port": 80},
            },
            startupProbe={"exec": {}},
        )
    )
    assert describe(kinds.POD, data) == {
        "spec.containers[0].livenessProbe": "Required value: must specify a handler type",
        "spec.containers[0].readinessProbe.httpGet": "Forbidden: may not specify more than 1 "
        "handler type",
        "spec.containers[0].readinessProbe.tcpSocket": "Forbidden: may not specify more than 1 "
        "handler type",
        "spec.containers[0].startupProbe.exec.command": "Required value",
    }


@pytest.mark.parametrize(
    ("port", "ok"),
    [
        (80, True),
        ("http", True),
        (0, False),
        (65536, False),
        (80.5, False),
        ("HTTP", False),
        ("", False),
        ("a-very-long-port-name", False),
        (True, False),
    ],
)
def test_probe_ports(port: Any, ok: bool) -> None:
    data = pod_with(container(livenessProbe={"tcpSocket": {"port": port}}))
    # A bad name can break several rules; each is reported on the same field.
    assert set(paths(kinds.POD, data)) == (
        set() if ok else {"spec.containers[0].livenessProbe.tcpSocket.port"}
    )


def test_probe_port_required() -> None:
    data = pod_with(container(readinessProbe={"httpGet": {"path": "/"}}))
    assert describe(kinds.POD, data) == {
        "spec.containers[0].readinessProbe.httpGet.port": "Required value"
    }


def test_probe_numbers_and_thresholds() -> None:
    data = pod_with(
        container(
            livenessProbe={
                "tcpSocket": {"port": 80},
                "successThreshold": 2,
                "periodSeconds": -1,
                "initialDelaySeconds": -5,
            },
            startupProbe={
                "tcpSocket": {"port": 80},
                "successThreshold": 3,
                "terminationGracePeriodSeconds": 0,
            },
            readinessProbe={
                "tcpSocket": {"port": 80},
                "successThreshold": 3,
                "failureThreshold": -1,
                "httpGet": None,
            },
        )
    )
    data["spec"]["containers"][0]["readinessProbe"].pop("httpGet")
    found = describe(kinds.POD, data)
    prefix = "spec.containers[0]"
    assert found == {
        f"{prefix}.livenessProbe.initialDelaySeconds": "Invalid value: -5: must be greater than "
        "or equal to 0",
        f"{prefix}.livenessProbe.periodSeconds": "Invalid value: -1: must be greater than or "
        "equal to 0",
        f"{prefix}.livenessProbe.successThreshold": "Invalid value: 2: must be 1",
        f"{prefix}.readinessProbe.failureThreshold": "Invalid value: -1: must be greater than or "
        "equal to 0",
        f"{prefix}.startupProbe.terminationGracePeriodSeconds": "Invalid value: 0: must be "
        "greater than 0",
        f"{prefix}.startupProbe.successThreshold": "Invalid value: 3: must be 1",
    }


def test_http_probe_scheme() -> None:
    data = pod_with(container(livenessProbe={"httpGet": {"port": 80, "scheme": "FTP"}}))
    assert paths(kinds.POD, data) == ["spec.containers[0].livenessProbe.httpGet.scheme"]


def test_init_containers_may_not_have_probes() -> None:
    probe = {"tcpSocket": {"port": 80}}
    data = pod_with(
        container(),
        initContainers=[
            container(name="i", livenessProbe=probe, readinessProbe=probe, startupProbe=probe)
        ],
    )
    assert describe(kinds.POD, data) == {
        "spec.initContainers[0].livenessProbe": "Forbidden: may not be set for init containers",
        "spec.initContainers[0].readinessProbe": "Forbidden: may not be set for init containers",
        "spec.initContainers[0].startupProbe": "Forbidden: may not be set for init containers",
    }


def test_node_selector() -> None:
    data = pod_with(container(), nodeSelector={"disk": "ssd", "-bad": "x", "zone": "a b"})
    assert paths(kinds.POD, data) == ["spec.nodeSelector", "spec.nodeSelector"]


def test_node_affinity() -> None:
    terms = [
        {
            "matchExpressions": [
                {"key": "zone", "operator": "In"},
                {"key": "gpu", "operator": "Exists", "values": ["x"]},
                {"key": "cores", "operator": "Gt", "values": ["1", "2"]},
                {"key": "cores", "operator": "Lt", "values": ["many"]},
                {"key": "zone", "operator": "Near", "values": ["a"]},
                {"key": "bad key", "operator": "DoesNotExist"},
            ],
            "matchFields": [
                {"key": "metadata.labels", "operator": "In", "values": ["a"]},
                {"key": "metadata.name", "operator": "In", "values": ["a", "b"]},
            ],
        }
    ]
    required = {"nodeSelectorTerms": terms}
    data = pod_with(
        container(),
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}},
    )
    base = (
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0]"
    )
    assert paths(kinds.POD, data) == [
        f"{base}.matchExpressions[0].values",
        f"{base}.matchExpressions[1].values",
        f"{base}.matchExpressions[2].values",
        f"{base}.matchExpressions[3].values[0]",
        f"{base}.matchExpressions[4].operator",
        f"{base}.matchExpressions[5].key",
        f"{base}.matchFields[0].key",
        f"{base}.matchFields[1].values",
    ]


def test_node_affinity_needs_a_term() -> None:
    data = pod_with(
        container(),
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}},
    )
    assert describe(kinds.POD, data) == {
        "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms": "Required value: must have at least one node selector term"
    }


def test_tolerations() -> None:
    data = pod_with(
        container(),
        tolerations=[
            {"key": "a", "operator": "Exists", "value": "x"},
            {"key": "b", "operator": "Maybe"},
            {"key": "c", "effect": "NoSchedule", "tolerationSeconds": 10},
            {"key": "d", "effect": "Sometimes"},
            {"effect": "NoSchedule"},
            {"key": "e", "value": "not valid!"},
            {"key": "f", "effect": "NoExecute", "tolerationSeconds": 10},
        ],
    )
    errs = check(kinds.POD, data)
    assert [v.field for v in errs] == [
        "spec.tolerations[0].operator",
        "spec.tolerations[1].operator",
        "spec.tolerations[2].effect",
        "spec.tolerations[3].effect",
        "spec.tolerations[4].operator",
        "spec.tolerations[5].value",
    ]
    assert errs[1].description == 'Unsupported value: "Maybe": supported values: "Equal", "Exists"'


def test_termination_grace_period() -> None:
    data = pod_with(container(), terminationGracePeriodSeconds=-1)
    assert describe(kinds.POD, data) == {
        "spec.terminationGracePeriodSeconds": "Invalid value: -1: must be greater than or equal "
        "to 0"
    }


def test_node_name_and_scheduler_name() -> None:
    data = pod_with(container(), nodeName="Node_1", schedulerName="my scheduler")
    assert paths(kinds.POD, data) == ["spec.nodeName", "spec.schedulerName"]


# ------------------------------------------------------------------- Service


def test_service_type() -> None:
    assert paths(kinds.SERVICE, changed(SERVICE, "spec.type", "LoadBalancer")) == []
    found = describe(kinds.SERVICE, changed(SERVICE, "spec.type", "Other"))
    assert found == {
        "spec.type": 'Unsupported value: "Other": supported values: "ClusterIP", "NodePort", '
        '"LoadBalancer", "ExternalName"'
    }


def test_service_ports_required_unless_headless() -> None:
    assert describe(kinds.SERVICE, changed(SERVICE, "spec.ports", [])) == {
        "spec.ports": "Required value"
    }
    headless = changed(changed(SERVICE, "spec.ports", []), "spec.clusterIP", "None")
    assert check(kinds.SERVICE, headless) == []


def test_service_ports() -> None:
    data = changed(
        SERVICE,
        "spec.ports",
        [
            {"name": "http", "port": 80},
            {"name": "http", "port": 0},
            {"port": 81},
            {"name": "Bad_Name", "port": 70000, "protocol": "ICMP"},
            {"name": "dup", "port": 80},
            {"name": "tp", "port": 82, "targetPort": 0.5},
            {"name": "tp2", "port": 83, "targetPort": "not a name"},
        ],
    )
    errs = check(kinds.SERVICE, data)
    assert [v.field for v in errs] == [
        "spec.ports[1].name",
        "spec.ports[1].port",
        "spec.ports[1].targetPort",  # defaulted from the port
        "spec.ports[2].name",
        "spec.ports[3].name",
        "spec.ports[3].port",
        "spec.ports[3].protocol",
        "spec.ports[3].targetPort",
        "spec.ports[4]",
        "spec.ports[5].targetPort",
        "spec.ports[6].targetPort",
    ]
    assert errs[0].description == 'Duplicate value: "http"'
    assert errs[3].description == "Required value"
    assert errs[8].description == 'Duplicate value: "80/TCP"'
    assert errs[9].description == "Invalid value: 0.5: must be an integer"


def test_single_service_port_needs_no_name() -> None:
    data = changed(SERVICE, "spec.ports", [{"port": 80, "targetPort": 8080}])
    assert check(kinds.SERVICE, data) == []


def test_node_ports() -> None:
    low, high = NODE_PORT_RANGE
    assert (low, high) == (30000, 32767)
    ports = [
        {"name": "a", "port": 80, "nodePort": low},
        {"name": "b", "port": 81, "nodePort": high + 1},
        {"name": "c", "port": 82, "nodePort": low},
        {"name": "d", "port": 83},  # 0: to be allocated
    ]
    data = changed(changed(SERVICE, "spec.ports", ports), "spec.type", "NodePort")
    errs = check(kinds.SERVICE, data)
    assert [v.field for v in errs] == ["spec.ports[1].nodePort", "spec.ports[2].nodePort"]
    assert errs[0].description == (
        "Invalid value: 32768: provided port is not in the valid range. "
        "The range of valid ports is 30000-32767"
    )
    assert describe(kinds.SERVICE, changed(SERVICE, "spec.ports", ports[:1])) == {
        "spec.ports[0].nodePort": "Forbidden: may not be used when `type` is 'ClusterIP'"
    }


@pytest.mark.parametrize(
    ("cluster_ip", "ok"),
    [
        ("", True),
        ("None", True),
        ("10.96.0.1", True),
        ("10.96.0.256", False),
        ("fd00::1", False),
        ("none", False),
    ],
)
def test_cluster_ip(cluster_ip: str, ok: bool) -> None:
    data = changed(SERVICE, "spec.clusterIP", cluster_ip)
    assert paths(kinds.SERVICE, data) == ([] if ok else ["spec.clusterIP"])


def test_headless_node_port_service() -> None:
    data = changed(changed(SERVICE, "spec.clusterIP", "None"), "spec.type", "NodePort")
    assert paths(kinds.SERVICE, data) == ["spec.clusterIP"]


def test_session_affinity() -> None:
    assert paths(kinds.SERVICE, changed(SERVICE, "spec.sessionAffinity", "Sticky")) == [
        "spec.sessionAffinity"
    ]
    data = changed(SERVICE, "spec.sessionAffinity", "ClientIP")
    for timeout, ok in ((1, True), (86400, True), (0, False), (86401, False)):
        data["spec"]["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": timeout}}
        expected = [] if ok else ["spec.sessionAffinityConfig.clientIP.timeoutSeconds"]
        assert paths(kinds.SERVICE, data) == expected
    data = changed(SERVICE, "spec.sessionAffinityConfig", {"clientIP": {"timeoutSeconds": 5}})
    assert paths(kinds.SERVICE, data) == ["spec.sessionAffinityConfig"]


def test_service_selector() -> None:
    data = changed(SERVICE, "spec.selector", {"app": "web", "bad/key/x": "v"})
    assert paths(kinds.SERVICE, data) == ["spec.selector"]


# ------------------------------------------------------------- EndpointSlice


def test_endpoint_slice_address_type() -> None:
    data = changed(ENDPOINT_SLICE, "addressType", "")
    assert describe(kinds.ENDPOINT_SLICE, data) == {"addressType": "Required value"}
    data = changed(ENDPOINT_SLICE, "addressType", "IPv5")
    assert describe(kinds.ENDPOINT_SLICE, data) == {
        "addressType": 'Unsupported value: "IPv5": supported values: "FQDN", "IPv4", "IPv6"'
    }


def test_endpoint_slice_endpoints() -> None:
    data = changed(
        ENDPOINT_SLICE,
        "endpoints",
        [
            {"addresses": []},
            {"addresses": ["10.0.0.1", "fd00::1", "300.1.1.1"]},
            {"addresses": [f"10.0.0.{i % 250}" for i in range(101)]},
            {"addresses": ["10.0.0.2"], "hostname": "Host.1", "nodeName": "node_1"},
        ],
    )
    assert paths(kinds.ENDPOINT_SLICE, data) == [
        "endpoints[0].addresses",
        "endpoints[1].addresses[1]",
        "endpoints[1].addresses[2]",
        "endpoints[2].addresses",
        "endpoints[3].hostname",
        "endpoints[3].nodeName",
    ]


def test_endpoint_slice_address_families() -> None:
    v6 = changed(
        changed(ENDPOINT_SLICE, "addressType", "IPv6"), "endpoints.0.addresses", ["fd00::5"]
    )
    assert check(kinds.ENDPOINT_SLICE, v6) == []
    fqdn = changed(
        changed(ENDPOINT_SLICE, "addressType", "FQDN"), "endpoints.0.addresses", ["db.example.com"]
    )
    assert check(kinds.ENDPOINT_SLICE, fqdn) == []
    bad = changed(fqdn, "endpoints.0.addresses", ["not a host"])
    assert paths(kinds.ENDPOINT_SLICE, bad) == ["endpoints[0].addresses[0]"]


def test_endpoint_slice_too_many_endpoints() -> None:
    data = changed(ENDPOINT_SLICE, "endpoints", [{"addresses": ["10.0.0.1"]}] * 1001)
    assert describe(kinds.ENDPOINT_SLICE, data) == {
        "endpoints": "Too many: 1001: must have at most 1000 items"
    }


def test_endpoint_slice_ports() -> None:
    data = changed(
        ENDPOINT_SLICE,
        "ports",
        [
            {"name": "http", "port": 80},
            {"name": "http", "port": 81},
            {"port": 0},
            {"port": 70000},
            {"name": "Bad", "protocol": "ICMP"},
            {},
        ],
    )
    assert paths(kinds.ENDPOINT_SLICE, data) == [
        "ports[1].name",
        "ports[3].name",  # a second unnamed port
        "ports[3].port",
        "ports[4].name",
        "ports[4].protocol",
        "ports[5].name",
    ]


# ----------------------------------------------------------------- workloads


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        (kinds.DEPLOYMENT, DEPLOYMENT),
        (kinds.REPLICA_SET, REPLICA_SET),
        (kinds.DAEMON_SET, DAEMON_SET),
    ],
)
def test_workload_selector(kind: kinds.Kind, data: dict[str, Any]) -> None:
    missing = copy.deepcopy(data)
    del missing["spec"]["selector"]
    assert describe(kind, missing) == {"spec.selector": "Required value"}

    empty = changed(data, "spec.selector", {})
    found = describe(kind, empty)
    assert list(found) == ["spec.selector"]
    assert found["spec.selector"].endswith("empty selector is invalid for " + kind.name.lower())

    mismatch = changed(data, "spec.selector", {"matchLabels": {"app": "other"}})
    assert describe(kind, mismatch) == {
        "spec.template.metadata.labels": 'Invalid value: {"app": "web", "tier": "frontend"}: '
        "`selector` does not match template `labels`"
    }

    bad = changed(data, "spec.selector", {"matchExpressions": [{"key": "app", "operator": "In"}]})
    found = describe(kind, bad)
    assert list(found) == ["spec.selector"]
    assert "matchExpressions[0].values" in found["spec.selector"]


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        (kinds.DEPLOYMENT, DEPLOYMENT),
        (kinds.REPLICA_SET, REPLICA_SET),
        (kinds.DAEMON_SET, DAEMON_SET),
    ],
)
def test_workload_template(kind: kinds.Kind, data: dict[str, Any]) -> None:
    data = changed(data, "spec.template.spec.restartPolicy", "OnFailure")
    data = changed(data, "spec.template.spec.containers.0.image", "")
    data = changed(data, "spec.template.metadata.annotations", {"-x": "y"})
    data = changed(data, "spec.minReadySeconds", -1)
    assert describe(kind, data) == {
        "spec.template.metadata.annotations": describe(kind, data)[
            "spec.template.metadata.annotations"
        ],
        "spec.template.spec.containers[0].image": "Required value",
        "spec.template.spec.restartPolicy": 'Unsupported value: "OnFailure": supported values: '
        '"Always"',
        "spec.minReadySeconds": "Invalid value: -1: must be greater than or equal to 0",
    }


def test_replicas_non_negative() -> None:
    assert paths(kinds.REPLICA_SET, changed(REPLICA_SET, "spec.replicas", -1)) == ["spec.replicas"]
    assert paths(kinds.DEPLOYMENT, changed(DEPLOYMENT, "spec.replicas", -1)) == ["spec.replicas"]
    assert check(kinds.DEPLOYMENT, changed(DEPLOYMENT, "spec.replicas", 0)) == []


def test_deployment_strategy_type() -> None:
    data = changed(DEPLOYMENT, "spec.strategy", {"type": "BlueGreen"})
    assert describe(kinds.DEPLOYMENT, data) == {
        "spec.strategy.type": 'Unsupported value: "BlueGreen": supported values: "Recreate", '
        '"RollingUpdate"'
    }
    data = changed(
        DEPLOYMENT, "spec.strategy", {"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}
    )
    assert describe(kinds.DEPLOYMENT, data) == {
        "spec.strategy.rollingUpdate": "Forbidden: may not be specified when strategy `type` is "
        "'Recreate'"
    }


@pytest.mark.parametrize(
    ("surge", "unavailable", "bad"),
    [
        (1, 0, []),
        ("0%", "100%", []),
        ("150%", 0, []),  # surge may exceed 100%
        (0, "101%", ["maxUnavailable"]),
        ("25", 1, ["maxSurge"]),
        (-1, 1, ["maxSurge"]),
        (1, 1.5, ["maxUnavailable"]),
        (0, 0, ["maxUnavailable"]),
        ("0%", 0, ["maxUnavailable"]),
    ],
)
def test_deployment_rolling_update(surge: Any, unavailable: Any, bad: list[str]) -> None:
    rolling = {"maxSurge": surge, "maxUnavailable": unavailable}
    data = changed(DEPLOYMENT, "spec.strategy", {"type": "RollingUpdate", "rollingUpdate": rolling})
    expected = [f"spec.strategy.rollingUpdate.{name}" for name in bad]
    assert paths(kinds.DEPLOYMENT, data) == expected


def test_deployment_both_zero_message() -> None:
    rolling = {"maxSurge": 0, "maxUnavailable": "0%"}
    data = changed(DEPLOYMENT, "spec.strategy", {"rollingUpdate": rolling})
    assert describe(kinds.DEPLOYMENT, data) == {
        "spec.strategy.rollingUpdate.maxUnavailable": 'Invalid value: "0%": may not be 0 when '
        "`maxSurge` is 0"
    }


def test_deployment_history_and_deadline() -> None:
    data = changed(DEPLOYMENT, "spec.revisionHistoryLimit", -1)
    assert paths(kinds.DEPLOYMENT, data) == ["spec.revisionHistoryLimit"]
    data = changed(
        changed(DEPLOYMENT, "spec.minReadySeconds", 30), "spec.progressDeadlineSeconds", 30
    )
    assert describe(kinds.DEPLOYMENT, data) == {
        "spec.progressDeadlineSeconds": "Invalid value: 30: must be greater than minReadySeconds"
    }
    data = changed(DEPLOYMENT, "spec.progressDeadlineSeconds", -1)
    assert paths(kinds.DEPLOYMENT, data) == ["spec.progressDeadlineSeconds"]


@pytest.mark.parametrize(
    ("strategy", "bad"),
    [
        ({"type": "OnDelete"}, []),
        ({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}, []),
        ({"type": "Replace"}, ["spec.updateStrategy.type"]),
        (
            {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
            ["spec.updateStrategy.rollingUpdate.maxSurge"],
        ),
        (
            {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}},
            ["spec.updateStrategy.rollingUpdate.maxUnavailable"],
        ),
        (
            {"rollingUpdate": {"maxSurge": "101%", "maxUnavailable": 0}},
            ["spec.updateStrategy.rollingUpdate.maxSurge"],
        ),
    ],
)
def test_daemon_set_update_strategy(strategy: dict[str, Any], bad: list[str]) -> None:
    data = changed(DAEMON_SET, "spec.updateStrategy", strategy)
    assert paths(kinds.DAEMON_SET, data) == bad


def test_daemon_set_history_limit() -> None:
    data = changed(DAEMON_SET, "spec.revisionHistoryLimit", -3)
    assert paths(kinds.DAEMON_SET, data) == ["spec.revisionHistoryLimit"]


# --------------------------------------------------------------------- Node


def test_node_cidrs() -> None:
    data = changed(NODE, "spec.podCIDR", "10.244.1.0")
    data["spec"]["podCIDRs"] = ["10.244.1.0/24", "10.244.1.0/24", "bogus/8", "fd00::/64"]
    errs = check(kinds.NODE, data)
    assert [v.field for v in errs] == ["spec.podCIDR", "spec.podCIDRs[1]", "spec.podCIDRs[2]"]
    assert errs[0].description == 'Invalid value: "10.244.1.0": must be a valid CIDR'


_TOO_WIDE = "a pod range this wide would cover the node's other routes"


@pytest.mark.parametrize(
    ("cidr", "description"),
    [
        (
            "10.244.1.7/24",
            'Invalid value: "10.244.1.7/24": must be a network address with no host bits '
            "set (did you mean 10.244.1.0/24?)",
        ),
        (
            "fd00::1/64",
            'Invalid value: "fd00::1/64": must be a network address with no host bits '
            "set (did you mean fd00::/64?)",
        ),
        # Kubelets route their pod CIDR: this one would replace the default route.
        (
            "0.0.0.0/0",
            'Invalid value: "0.0.0.0/0": must have a prefix length of at least 8 for IPv4: '
            + _TOO_WIDE,
        ),
        (
            "10.0.0.0/7",
            'Invalid value: "10.0.0.0/7": must have a prefix length of at least 8 for IPv4: '
            + _TOO_WIDE,
        ),
        (
            "fd00::/47",
            'Invalid value: "fd00::/47": must have a prefix length of at least 48 for IPv6: '
            + _TOO_WIDE,
        ),
        (
            "::/0",
            'Invalid value: "::/0": must have a prefix length of at least 48 for IPv6: '
            + _TOO_WIDE,
        ),
    ],
)
def test_node_pod_cidr_must_be_a_network_of_sane_width(cidr: str, description: str) -> None:
    data = changed(NODE, "spec.podCIDR", cidr)
    data["spec"]["podCIDRs"] = ["10.244.1.0/24", cidr]
    assert describe(kinds.NODE, data) == {
        "spec.podCIDR": description,
        "spec.podCIDRs[1]": description,
    }


@pytest.mark.parametrize(
    "cidr", ["10.0.0.0/8", "10.244.1.0/24", "10.1.0.0/29", "fd00::/48", "fd00:10:244:1::/64"]
)
def test_node_pod_cidr_accepts_network_addresses(cidr: str) -> None:
    data = changed(NODE, "spec.podCIDR", cidr)
    data["spec"]["podCIDRs"] = [cidr]
    assert check(kinds.NODE, data) == []


def test_node_taints() -> None:
    data = changed(
        NODE,
        "spec.taints",
        [
            {"key": "a", "effect": "NoSchedule"},
            {"key": "a", "value": "other", "effect": "NoSchedule"},
            {"key": "", "effect": "NoExecute"},
            {"key": "b"},
            {"key": "c", "effect": "Evict", "value": "bad value"},
        ],
    )
    errs = check(kinds.NODE, data)
    assert [v.field for v in errs] == [
        "spec.taints[1]",
        "spec.taints[2].key",
        "spec.taints[3].effect",
        "spec.taints[4].value",
        "spec.taints[4].effect",
    ]
    assert errs[0].description.endswith("taints must be unique by key and effect pair")
    assert errs[2].description == "Required value"
    assert errs[4].description == (
        'Unsupported value: "Evict": supported values: "NoSchedule", "PreferNoSchedule", '
        '"NoExecute"'
    )


def test_node_status_quantities() -> None:
    data = changed(NODE, "status.capacity", {"cpu": "four", "memory": "-1Gi", "pods": "110"})
    assert paths(kinds.NODE, data) == ["status.capacity[cpu]", "status.capacity[memory]"]


# ------------------------------------------------------- Namespace and others


def test_namespace_finalizers() -> None:
    data = {"metadata": {"name": "team"}, "spec": {"finalizers": ["kubernetes", "x/y/z"]}}
    assert paths(kinds.NAMESPACE, data) == ["spec.finalizers[1]"]


def test_lease() -> None:
    base = {"metadata": {"name": "l", "namespace": "default"}}
    assert check(kinds.LEASE, base) == []
    data = {**base, "spec": {"leaseDurationSeconds": 0, "leaseTransitions": -1}}
    assert describe(kinds.LEASE, data) == {
        "spec.leaseDurationSeconds": "Invalid value: 0: must be greater than 0",
        "spec.leaseTransitions": "Invalid value: -1: must be greater than or equal to 0",
    }


def test_event() -> None:
    base = {"metadata": {"name": "e", "namespace": "default"}}
    assert paths(kinds.EVENT, base) == ["involvedObject"]
    assert check(kinds.EVENT, {**base, "involvedObject": {"kind": "Node"}}) == []
    data = {**base, "involvedObject": {"name": "n"}, "type": "Error"}
    assert describe(kinds.EVENT, data) == {
        "type": 'Unsupported value: "Error": supported values: "Normal", "Warning"'
    }


# -------------------------------------------------------------------- update


def update(kind: kinds.Kind, old: dict[str, Any], new: dict[str, Any]) -> list[FieldViolation]:
    return validate_update(kind, build(kind, new), build(kind, old))


def update_paths(kind: kinds.Kind, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [v.field for v in update(kind, old, new)]


def test_metadata_immutable() -> None:
    old = changed(
        changed(POD, "metadata.uid", "u1"), "metadata.creationTimestamp", "2024-01-01T00:00:00Z"
    )
    new = changed(old, "metadata.name", "other")
    new = changed(new, "metadata.namespace", "prod")
    new = changed(new, "metadata.uid", "u2")
    new = changed(new, "metadata.creationTimestamp", "2024-02-01T00:00:00Z")
    new = changed(new, "metadata.labels", {"app": "changed"})  # labels may change
    errs = update(kinds.POD, old, new)
    assert [v.field for v in errs] == [
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "metadata.creationTimestamp",
    ]
    assert errs[0].description == 'Invalid value: "other": field is immutable'
    assert errs[3].description == 'Invalid value: "2024-02-01T00:00:00Z": field is immutable'


def test_pod_update_allows_images_and_added_tolerations() -> None:
    new = changed(POD, "spec.containers.0.image", "nginx:1.26")
    new = changed(new, "spec.initContainers.0.image", "busybox:1.37")
    new["spec"]["tolerations"] = [*POD["spec"]["tolerations"], {"operator": "Exists"}]
    # tolerationSeconds of an existing toleration may change.
    new["spec"]["tolerations"][1] = {**new["spec"]["tolerations"][1], "tolerationSeconds": 60}
    assert update(kinds.POD, POD, new) == []


def test_pod_update_refuses_other_spec_changes() -> None:
    new = changed(POD, "spec.containers.0.ports", [{"containerPort": 8080}])
    new = changed(new, "spec.terminationGracePeriodSeconds", 5)
    errs = update(kinds.POD, POD, new)
    assert [v.field for v in errs] == ["spec"]
    assert errs[0].description.startswith(
        "Forbidden: pod updates may not change fields other than `spec.containers[*].image`"
    )
    assert errs[0].description.endswith(
        "changed: spec.containers, spec.terminationGracePeriodSeconds"
    )


def test_pod_update_refuses_adding_containers() -> None:
    new = copy.deepcopy(POD)
    new["spec"]["containers"].append({"name": "extra", "image": "x:1"})
    assert update_paths(kinds.POD, POD, new) == ["spec"]


def test_pod_update_refuses_removed_toleration() -> None:
    new = changed(POD, "spec.tolerations", POD["spec"]["tolerations"][:1])
    assert [str(v) for v in update(kinds.POD, POD, new)] == [
        "spec.tolerations: Forbidden: existing toleration can not be modified except its "
        "tolerationSeconds"
    ]


def test_pod_binding() -> None:
    bound = changed(POD, "spec.nodeName", "node-1")
    assert update(kinds.POD, POD, bound) == []  # binding an unbound pod
    moved = changed(POD, "spec.nodeName", "node-2")
    assert [str(v) for v in update(kinds.POD, bound, moved)] == [
        'spec.nodeName: Forbidden: pod is already assigned to node "node-1"'
    ]
    assert update_paths(kinds.POD, bound, POD) == ["spec.nodeName"]


def test_service_cluster_ip_immutable() -> None:
    old = changed(SERVICE, "spec.clusterIP", "10.96.0.10")
    assert update(kinds.SERVICE, SERVICE, old) == []  # allocation
    assert update_paths(kinds.SERVICE, old, changed(old, "spec.clusterIP", "10.96.0.11")) == [
        "spec.clusterIP"
    ]
    node_port = changed(old, "spec.type", "NodePort")
    assert update(kinds.SERVICE, old, node_port) == []  # type may change
    assert update(kinds.SERVICE, old, changed(old, "spec.ports.0.port", 8080)) == []


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        (kinds.DEPLOYMENT, DEPLOYMENT),
        (kinds.REPLICA_SET, REPLICA_SET),
        (kinds.DAEMON_SET, DAEMON_SET),
    ],
)
def test_workload_selector_immutable(kind: kinds.Kind, data: dict[str, Any]) -> None:
    scaled = changed(data, "spec.template.spec.containers.0.image", "nginx:2")
    assert update(kind, data, scaled) == []
    moved = changed(data, "spec.selector", {"matchLabels": {"app": "web", "tier": "frontend"}})
    errs = update(kind, data, moved)
    assert [v.field for v in errs] == ["spec.selector"]
    assert errs[0].description.endswith("field is immutable")


def test_node_pod_cidr_immutable_once_set() -> None:
    empty = {"metadata": {"name": "n"}}
    assigned: dict[str, Any] = {
        "metadata": {"name": "n"},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
    }
    assert update(kinds.NODE, empty, assigned) == []
    moved = {
        "metadata": {"name": "n"},
        "spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]},
    }
    assert update_paths(kinds.NODE, assigned, moved) == ["spec.podCIDR", "spec.podCIDRs"]
    unschedulable = {**assigned, "spec": {**assigned["spec"], "unschedulable": True}}
    assert update(kinds.NODE, assigned, unschedulable) == []


def test_endpoint_slice_address_type_immutable() -> None:
    new = changed(ENDPOINT_SLICE, "addressType", "IPv6")
    assert [str(v) for v in update(kinds.ENDPOINT_SLICE, ENDPOINT_SLICE, new)] == [
        'addressType: Invalid value: "IPv6": field is immutable'
    ]
    new = changed(ENDPOINT_SLICE, "endpoints", [])
    assert update(kinds.ENDPOINT_SLICE, ENDPOINT_SLICE, new) == []


def test_update_of_other_kinds_checks_metadata_only() -> None:
    old = {"metadata": {"name": "team"}}
    assert update(kinds.NAMESPACE, old, changed(old, "metadata.labels", {"a": "b"})) == []
    assert update_paths(kinds.NAMESPACE, old, changed(old, "metadata.name", "x")) == [
        "metadata.name"
    ]


# -- Node addresses (hostile input: the master dials them, kubelets route via them)


def node_with_address(kind: str, address: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "n"},
        "status": {
            "addresses": [{"type": "Hostname", "address": "n"}, {"type": kind, "address": address}]
        },
    }


@pytest.mark.parametrize(
    ("kind", "address", "problem"),
    [
        ("InternalIP", "10.99.0.11", ""),
        ("ExternalIP", "2001:db8::5", ""),
        ("InternalIP", "127.0.0.1", ""),  # loopback: left to the master's strategy
        ("InternalIP", "", "must be a valid IP address"),
        ("InternalIP", "10.99.0.256", "must be a valid IP address"),
        ("InternalIP", "node-a", "must be a valid IP address"),
        ("InternalIP", "fe80::1%eth0", "must be a valid IP address"),
        ("InternalIP", "0.0.0.0", "may not be unspecified"),
        ("ExternalIP", "::", "may not be unspecified"),
        ("InternalIP", "::ffff:0.0.0.0", "may not be unspecified"),
        ("InternalIP", "224.0.0.1", "may not be in the link-local multicast range"),
        ("InternalIP", "ff02::1", "may not be in the link-local multicast range"),
        ("ExternalIP", "239.1.2.3", "may not be a multicast address"),
        ("Hostname", "node-a.example.com", ""),
        ("InternalDNS", "Node_A", "a lowercase RFC 1123 subdomain"),
        ("Hostname", "", "a lowercase RFC 1123 subdomain"),
    ],
)
def test_node_addresses(kind: str, address: str, problem: str) -> None:
    found = describe(kinds.NODE, node_with_address(kind, address))
    if not problem:
        assert found == {}
        return
    assert list(found) == ["status.addresses[1].address"]
    assert problem in found["status.addresses[1].address"]


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_loopback_node_addresses_only_on_a_master_no_other_machine_reaches(address: str) -> None:
    from kubeling.master.server import loopback_only
    from kubeling.master.strategies import strategy_for

    node = build(kinds.NODE, node_with_address("InternalIP", address))
    reachable = strategy_for(kinds.NODE, loopback_node_addresses=loopback_only("0.0.0.0:6443"))
    assert [(v.field, v.description) for v in reachable.validate(node)] == [
        (
            "status.addresses[1].address",
            f'Invalid value: "{address}": may not be in the loopback range (127.0.0.0/8, ::1/128)',
        )
    ]
    local = strategy_for(kinds.NODE, loopback_node_addresses=loopback_only("127.0.0.1:0,unix:/m"))
    assert local.validate(node) == []


@pytest.mark.parametrize(
    ("listen", "only"),
    [
        ("127.0.0.1:6443", True),
        ("[::1]:6443", True),
        ("127.0.0.1:0,unix:/run/m.sock", True),
        ("0.0.0.0:6443", False),
        ("[::]:6443", False),
        ("10.0.0.1:6443,127.0.0.1:6443", False),
        ("master.example:6443", False),
    ],
)
def test_loopback_only_listen(listen: str, only: bool) -> None:
    from kubeling.master.server import loopback_only

    assert loopback_only(listen) is only
