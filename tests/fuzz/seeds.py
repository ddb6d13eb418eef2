"""A valid request for each RPC the fuzz suite attacks, for it to mutate: requests
that get past the first checks reach the deeper ones (update rules, strategies,
forwarding to the kubelet). The objects are the valid ones of the validation tests;
the fuzz cluster's master holds each of them, so Update/Get/Delete find them."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from kubeling.api import kinds
from kubeling.api.kinds import ALL_KINDS, Kind
from kubeling.common import identity, pki
from kubeling.v1 import certificates_pb2, core_pb2, kubelet_pb2, meta_pb2, proxy_pb2, tokens_pb2
from tests.unit.test_validation import (
    DAEMON_SET,
    DEPLOYMENT,
    ENDPOINT_SLICE,
    NODE,
    POD,
    REPLICA_SET,
    SERVICE,
)

OBJECTS: dict[str, dict[str, Any]] = {
    kinds.POD.name: POD,
    kinds.DEPLOYMENT.name: DEPLOYMENT,
    kinds.REPLICA_SET.name: REPLICA_SET,
    kinds.DAEMON_SET.name: DAEMON_SET,
    kinds.SERVICE.name: SERVICE,
    kinds.ENDPOINT_SLICE.name: ENDPOINT_SLICE,
    kinds.NODE.name: NODE,
    kinds.NAMESPACE.name: {"metadata": {"name": "team-a"}},
    kinds.CONFIG_MAP.name: {
        "metadata": {"name": "app-config", "namespace": "default"},
        "data": {"mode": "production"},
    },
    kinds.SECRET.name: {
        "metadata": {"name": "db", "namespace": "default"},
        "type": "Opaque",
        "data": {"password": "czNjcjN0"},
    },
    kinds.JOB.name: {
        "metadata": {"name": "pi", "namespace": "default"},
        "spec": {
            "completions": 2,
            "parallelism": 1,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "pi", "image": "busybox", "command": ["true"]}],
                }
            },
        },
    },
    kinds.CRON_JOB.name: {
        "metadata": {"name": "hourly", "namespace": "default"},
        "spec": {
            "schedule": "0 * * * *",
            "jobTemplate": {
                "spec": {
                    "template": {
                        "spec": {
                            "restartPolicy": "OnFailure",
                            "containers": [{"name": "c", "image": "busybox"}],
                        }
                    }
                }
            },
        },
    },
    kinds.STATEFUL_SET.name: {
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {
            "serviceName": "db",
            "replicas": 2,
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "db", "image": "busybox"}]},
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                }
            ],
        },
    },
    kinds.CONTROLLER_REVISION.name: {
        "metadata": {"name": "db-5d8f7c9b6d", "namespace": "default"},
        "data": {"spec": {"template": {"metadata": {"labels": {"app": "db"}}}}},
        "revision": 1,
    },
    kinds.PERSISTENT_VOLUME.name: {
        "metadata": {"name": "pv-data"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": "/srv/data"},
        },
    },
    kinds.PERSISTENT_VOLUME_CLAIM.name: {
        "metadata": {"name": "data", "namespace": "default"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
        },
    },
    kinds.STORAGE_CLASS.name: {
        "metadata": {"name": "fast"},
        "provisioner": "rancher.io/local-path",
        "volumeBindingMode": "WaitForFirstConsumer",
    },
    kinds.LEASE.name: {
        "metadata": {"name": "node-1", "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40},
    },
    kinds.EVENT.name: {
        "metadata": {"name": "web-0.17a", "namespace": "default"},
        "involvedObject": {"kind": "Pod", "name": "web-0", "namespace": "default"},
        "reason": "Scheduled",
        "type": "Normal",
    },
}


def seed_object(kind: Kind) -> Message:
    data = {k: v for k, v in OBJECTS[kind.name].items() if k not in ("apiVersion", "kind")}
    return json_format.ParseDict(data, kind.message())


_KIND_BY_SERVICE = {kind.service.rsplit(".", 1)[1]: kind for kind in ALL_KINDS}


def _csr(user: str, groups: tuple[str, ...]) -> bytes:
    return pki.make_csr(pki.make_key(), user, groups)


def seed_request(service: str, method: str, join_token: str = "") -> Message | None:
    """A valid request for `service`/`method` (short service names), or None;
    `join_token`: a bootstrap token the master under test accepts."""
    kind = _KIND_BY_SERVICE.get(service)
    if kind is not None:
        obj = seed_object(kind)
        meta = obj.metadata  # type: ignore[attr-defined]
        where = {"namespace": meta.namespace, "name": meta.name}
        bound = {"namespace": "default", "name": "web"}  # the pod the kubelet runs
        if method in ("Create", "Update", "UpdateStatus"):
            request = kind.create_request() if method == "Create" else kind.update_request()
            getattr(request, kind.request_field).CopyFrom(obj)
            return request
        simple: dict[str, Message] = {
            "Get": meta_pb2.GetRequest(**where),
            # A pod bound to a node is marked with a grace period, not removed at once.
            "Delete": meta_pb2.DeleteRequest(
                **(bound if kind is kinds.POD else where), grace_period_seconds=30
            ),
            "List": meta_pb2.ListRequest(namespace=meta.namespace, label_selector="app=web"),
            "Watch": meta_pb2.WatchRequest(namespace=meta.namespace),
            "Bind": core_pb2.BindRequest(**where, node_name="node-1"),
            "Exec": core_pb2.PodExecRequest(
                namespace="default", name="web", command=["echo", "hi"], timeout_seconds=5
            ),
            "Logs": core_pb2.PodLogsRequest(namespace="default", name="web", tail_lines=10),
        }
        return simple.get(method)
    if service == "Certificates":
        node = identity.node_identity("node-1")
        certificates: dict[str, Message] = {
            "Join": certificates_pb2.JoinRequest(
                token=join_token,
                role="node",
                node_name="node-1",
                csr=_csr(node.user, node.groups),
                addresses=["10.0.0.7"],
            ),
            "Renew": certificates_pb2.RenewRequest(
                csr=_csr("kubeling-admin", (identity.GROUP_MASTERS,))
            ),
            "IssueUser": certificates_pb2.IssueUserRequest(
                name="fuzz-user", role="view", csr=_csr("fuzz-user", (identity.GROUP_VIEW,))
            ),
        }
        return certificates.get(method)
    return {
        ("Tokens", "Create"): tokens_pb2.CreateTokenRequest(
            ttl=Duration(seconds=3600), description="fuzz"
        ),
        ("Tokens", "List"): tokens_pb2.ListTokensRequest(),
        ("Tokens", "Delete"): tokens_pb2.DeleteTokenRequest(id=join_token.partition(".")[0]),
        ("Kubelet", "ListPods"): kubelet_pb2.KubeletListPodsRequest(),
        ("Kubelet", "Exec"): core_pb2.PodExecRequest(
            namespace="default", name="web", command=["echo", "hi"], timeout_seconds=5
        ),
        ("Kubelet", "Logs"): core_pb2.PodLogsRequest(namespace="default", name="web"),
        ("Kubelet", "Stats"): kubelet_pb2.StatsRequest(namespace="default"),
        ("Proxy", "Explain"): proxy_pb2.ExplainRequest(address="10.96.0.10", port=80),
        ("Proxy", "Status"): proxy_pb2.ProxyStatusRequest(),
    }.get((service, method))
