"""ConfigMaps, Secrets and the pod fields that use them (issue 13): defaults,
validation with Kubernetes' field paths, immutability on update, who may read
Secrets (authz), and the Secrets cipher's key handling."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from kubeling.api import kinds
from kubeling.api.errors import ApiError
from kubeling.common import identity
from kubeling.common.identity import Identity
from kubeling.master import cluster_ca
from kubeling.master.authz import Authorizer
from kubeling.master.codec import (
    ENCRYPTION_PREFIX,
    LOCAL_KEY_FILE,
    ProtoCodec,
    SecretDecryptionError,
    SecretsCipher,
    derive_key,
)
from kubeling.master.defaults import apply_defaults
from kubeling.master.server import Master, MasterConfig
from kubeling.master.validation import validate, validate_update
from kubeling.v1 import core_pb2, meta_pb2

# ------------------------------------------------------------------ helpers


def build(kind: kinds.Kind, data: dict[str, Any]) -> Any:
    obj = json_format.ParseDict(data, kind.message())
    apply_defaults(kind, obj)
    return obj


def problems(kind: kinds.Kind, data: dict[str, Any]) -> dict[str, str]:
    return {v.field: v.description for v in validate(kind, build(kind, data))}


def pod(spec: dict[str, Any]) -> dict[str, Any]:
    containers = spec.pop("containers", [{"name": "c", "image": "busybox:1.36"}])
    return {
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": containers, **spec},
    }


def cm(data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": "cm", "namespace": "default"}, "data": data, **extra}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# ------------------------------------------------------------------ defaults


def test_secret_defaults_merge_string_data_and_type() -> None:
    secret = build(
        kinds.SECRET,
        {
            "metadata": {"name": "s"},
            "data": {"user": b64("admin"), "password": b64("old")},
            "stringData": {"password": "new"},
        },
    )
    assert secret.type == "Opaque"
    # stringData wins over data and is not kept (write-only, as in Kubernetes).
    assert dict(secret.data) == {"user": b"admin", "password": b"new"}
    assert not secret.string_data


def test_pod_defaults_dns_policy_and_volume_modes() -> None:
    spec = build(
        kinds.POD,
        pod(
            {
                "volumes": [
                    {"name": "a", "configMap": {"name": "cfg"}},
                    {"name": "b", "secret": {"secretName": "s", "defaultMode": 0o400}},
                    {
                        "name": "c",
                        "downwardAPI": {
                            "items": [
                                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}
                            ]
                        },
                    },
                    {"name": "d", "emptyDir": {}},
                ]
            }
        ),
    ).spec
    assert spec.dns_policy == "ClusterFirst"
    # Not in templates: their hash would change for workloads stored before.
    template = build(kinds.DEPLOYMENT, {
        "metadata": {"name": "d", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
            "metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}},
    })  # fmt: skip
    assert template.spec.template.spec.dns_policy == ""
    assert not validate(kinds.DEPLOYMENT, template)
    assert spec.volumes[0].config_map.default_mode == 0o644
    assert spec.volumes[1].secret.default_mode == 0o400  # the user's choice stays
    assert spec.volumes[2].downward_api.default_mode == 0o644
    assert spec.volumes[2].downward_api.items[0].field_ref.api_version == "v1"
    assert not spec.volumes[3].empty_dir.medium


# ---------------------------------------------------------- ConfigMap, Secret


def test_config_map_keys() -> None:
    found = problems(kinds.CONFIG_MAP, cm({"ok.key_-1": "x", "bad/key": "x", "..dots": "x"}))
    assert set(found) == {"data[bad/key]", "data[..dots]"}
    assert "a valid config key must consist of alphanumeric characters" in found["data[bad/key]"]
    assert "must not start with '..'" in found["data[..dots]"]
    long_key = "k" * 254
    assert (
        "must be no more than 253 characters"
        in problems(kinds.CONFIG_MAP, cm({long_key: "x"}))[f"data[{long_key}]"]
    )


def test_config_map_key_in_data_and_binary_data() -> None:
    found = problems(kinds.CONFIG_MAP, cm({"k": "x"}, binaryData={"k": b64("y")}))
    assert "duplicate of key present in binaryData" in found["data[k]"]


def test_config_map_and_secret_size_limit() -> None:
    big = "x" * (1024 * 1024)
    assert "Too long" in problems(kinds.CONFIG_MAP, cm({"big": big}))["data"]
    assert not problems(kinds.CONFIG_MAP, cm({"big": big[:-10]}))
    secret = {"metadata": {"name": "s"}, "stringData": {"big": big}}
    assert "at most 1048576 bytes" in problems(kinds.SECRET, secret)["data"]


def test_secret_types_need_their_keys() -> None:
    tls = {
        "metadata": {"name": "s", "namespace": "default"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": b64("c")},
    }
    assert list(problems(kinds.SECRET, tls)) == ["data[tls.key]"]
    bad = {"metadata": {"name": "s", "namespace": "default"}, "stringData": {"a b": "x"}}
    assert list(problems(kinds.SECRET, bad)) == ["data[a b]"]


def test_immutable_objects_refuse_data_changes() -> None:
    old = build(kinds.CONFIG_MAP, cm({"k": "v1"}, immutable=True))
    new = build(kinds.CONFIG_MAP, cm({"k": "v2"}, immutable=True))
    found = {v.field: v.description for v in validate_update(kinds.CONFIG_MAP, new, old)}
    assert found == {"data": "Forbidden: field is immutable when `immutable` is set"}
    unfrozen = build(kinds.CONFIG_MAP, cm({"k": "v1"}, immutable=False))
    assert [v.field for v in validate_update(kinds.CONFIG_MAP, unfrozen, old)] == ["immutable"]
    # Labels may still change; a mutable one may change its data.
    relabeled = build(kinds.CONFIG_MAP, cm({"k": "v1"}, immutable=True))
    relabeled.metadata.labels["x"] = "y"
    assert not validate_update(kinds.CONFIG_MAP, relabeled, old)
    mutable = build(kinds.CONFIG_MAP, cm({"k": "v1"}))
    assert not validate_update(kinds.CONFIG_MAP, new, mutable)

    s_old = build(kinds.SECRET, {"metadata": {"name": "s"}, "immutable": True,
                                 "stringData": {"k": "a"}})  # fmt: skip
    s_new = build(kinds.SECRET, {"metadata": {"name": "s"}, "immutable": True,
                                 "stringData": {"k": "b"}, "type": "Other"})  # fmt: skip
    fields = sorted(v.field for v in validate_update(kinds.SECRET, s_new, s_old))
    assert fields == ["data", "type"]


# ------------------------------------------------------------------- pod spec


def test_pod_stored_before_dns_policy_still_updates() -> None:
    old = build(kinds.POD, pod({}))
    old.spec.dns_policy = ""  # as stored before the field existed
    new = build(kinds.POD, pod({}))
    new.spec.containers[0].image = "busybox:1.37"
    assert new.spec.dns_policy == "ClusterFirst"
    assert not validate_update(kinds.POD, new, old)
    new.spec.dns_policy = "Default"
    assert [v.field for v in validate_update(kinds.POD, new, old)] == ["spec"]


def test_volumes_names_and_sources() -> None:
    found = problems(
        kinds.POD,
        pod(
            {
                "volumes": [
                    {"name": "data", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                    {"name": "data", "emptyDir": {}},
                    {"name": "Bad_Name", "emptyDir": {}},
                    {"name": "none"},
                    {"name": "two", "emptyDir": {}, "hostPath": {"path": "/tmp"}},
                    {"name": "disk", "emptyDir": {"medium": "Disk"}},
                    {"name": "hp", "hostPath": {"path": "/var/../etc", "type": "Weird"}},
                ]
            }
        ),
    )
    assert found["spec.volumes[1].name"] == 'Duplicate value: "data"'
    assert "spec.volumes[2].name" in found
    assert found["spec.volumes[3]"] == "Required value: must specify a volume type"
    assert found["spec.volumes[4].hostPath"] == "Forbidden: may not specify more than 1 volume type"
    assert found["spec.volumes[5].emptyDir.medium"].startswith('Unsupported value: "Disk"')
    assert "must not contain '..'" in found["spec.volumes[6].hostPath.path"]
    assert found["spec.volumes[6].hostPath.type"].startswith('Unsupported value: "Weird"')
    assert "spec.volumes[0].name" not in found


def test_config_map_and_secret_volumes() -> None:
    found = problems(
        kinds.POD,
        pod(
            {
                "volumes": [
                    {"name": "a", "configMap": {"items": [{"key": "k", "path": "/abs"}]}},
                    {"name": "b", "secret": {"secretName": "s", "defaultMode": 0o1777,
                                             "items": [{"key": "bad key", "path": "sub/../up"}]}},
                    {"name": "c", "configMap": {"name": "ok", "items": [
                        {"key": "k", "path": "sub/file", "mode": 0o600}]}},
                ]
            }
        ),
    )  # fmt: skip
    assert found["spec.volumes[0].configMap.name"] == "Required value"
    assert "must be a relative path" in found["spec.volumes[0].configMap.items[0].path"]
    assert "0777 (octal)" in found["spec.volumes[1].secret.defaultMode"]
    assert "spec.volumes[1].secret.items[0].key" in found
    assert "must not contain '..'" in found["spec.volumes[1].secret.items[0].path"]
    assert not any(k.startswith("spec.volumes[2]") for k in found)


def test_downward_api_and_projected_volumes() -> None:
    found = problems(
        kinds.POD,
        pod(
            {
                "volumes": [
                    {"name": "d", "downwardAPI": {"items": [
                        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                        {"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}},
                        {"path": "lab", "fieldRef": {"fieldPath": "metadata.labels['app']"}},
                        {"path": "cpu", "resourceFieldRef": {"resource": "limits.cpu"}},
                        {"path": "none"},
                    ]}},
                    {"name": "p", "projected": {"sources": [
                        {"configMap": {"name": "c", "items": [{"key": "a", "path": "same"}]}},
                        {"secret": {"name": "s", "items": [{"key": "b", "path": "same"}]}},
                        {},
                    ]}},
                ]
            }
        ),
    )  # fmt: skip
    d = "spec.volumes[0].downwardAPI.items"
    assert found[f"{d}[1].fieldRef.fieldPath"].startswith('Unsupported value: "status.podIP"')
    assert f"{d}[2].fieldRef.fieldPath" not in found
    assert found[f"{d}[3].resourceFieldRef.containerName"] == "Required value"
    assert found[f"{d}[4]"].startswith("Required value: one of fieldRef and resourceFieldRef")
    p = "spec.volumes[1].projected.sources"
    assert "conflicting duplicate paths" in found[f"{p}[1].secret.items[0].path"]
    assert found[f"{p}[2]"] == "Required value: must specify exactly 1 projection type"


def test_volume_mounts() -> None:
    found = problems(
        kinds.POD,
        pod(
            {
                "volumes": [{"name": "v", "emptyDir": {}}],
                "containers": [
                    {
                        "name": "c",
                        "image": "busybox:1.36",
                        "volumeMounts": [
                            {"name": "v", "mountPath": "/data", "subPath": "x/y"},
                            {"name": "missing", "mountPath": "/data"},
                            {"name": "v", "mountPath": "relative"},
                            {"name": "v", "mountPath": "/other", "subPath": "../escape"},
                            {"name": "v", "mountPath": "/abs-sub", "subPath": "/abs"},
                        ],
                    }
                ],
            }
        ),
    )
    m = "spec.containers[0].volumeMounts"
    assert found[f"{m}[1].name"] == 'Not found: "missing"'
    assert "must be unique" in found[f"{m}[1].mountPath"]
    assert "must be an absolute path" in found[f"{m}[2].mountPath"]
    assert "must not contain '..'" in found[f"{m}[3].subPath"]
    assert "must be a relative path" in found[f"{m}[4].subPath"]
    assert not any(k.startswith(f"{m}[0]") for k in found)


def test_env_sources() -> None:
    found = problems(
        kinds.POD,
        pod(
            {
                "containers": [
                    {
                        "name": "c",
                        "image": "busybox:1.36",
                        "env": [
                            {"name": "A", "valueFrom": {
                                "configMapKeyRef": {"name": "cm", "key": "k"}}},
                            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s"}}},
                            {"name": "C", "valueFrom": {
                                "secretKeyRef": {"name": "s", "key": "k"},
                                "fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "D", "valueFrom": {"resourceFieldRef": {
                                "resource": "limits.memory", "divisor": "1Mi"}}},
                            {"name": "E", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "F", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}},
                        ],
                        "envFrom": [
                            {"prefix": "CFG_", "configMapRef": {"name": "cm"}},
                            {"secretRef": {"name": "s"}, "configMapRef": {"name": "cm"}},
                            {"prefix": "X"},
                        ],
                    }
                ]
            }
        ),
    )  # fmt: skip
    e = "spec.containers[0].env"
    one = 'Invalid value: "": may not have more than one field specified at a time'
    assert found == {
        f"{e}[1].valueFrom.secretKeyRef.key": "Required value",
        f"{e}[2].valueFrom": one,
        f"{e}[5].valueFrom.fieldRef.fieldPath": found[f"{e}[5].valueFrom.fieldRef.fieldPath"],
        "spec.containers[0].envFrom[1]": one,
        "spec.containers[0].envFrom[2]":
            "Required value: must specify one of: `configMapRef` or `secretRef`",
    }  # fmt: skip
    assert found[f"{e}[5].valueFrom.fieldRef.fieldPath"].startswith(
        'Unsupported value: "spec.bogus"'
    )


def test_security_context_and_dns() -> None:
    found = problems(
        kinds.POD,
        pod(
            {
                "securityContext": {"runAsUser": -1, "fsGroup": 1000},
                "dnsPolicy": "None",
                "subdomain": "Not_A_Label",
                "containers": [
                    {
                        "name": "c",
                        "image": "busybox:1.36",
                        "securityContext": {
                            "runAsUser": 1000,
                            "privileged": True,
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]},
                        },
                    }
                ],
            }
        ),
    )
    assert "must be between 0 and 2147483647" in found["spec.securityContext.runAsUser"]
    assert (
        "`allowPrivilegeEscalation` to false and `privileged` to true"
        in (found["spec.containers[0].securityContext"])
    )
    assert (
        found["spec.dnsConfig"]
        == "Required value: must provide `dnsConfig` when `dnsPolicy` is None"
    )
    assert "spec.subdomain" in found
    assert set(found) == {
        "spec.securityContext.runAsUser",
        "spec.containers[0].securityContext",
        "spec.dnsConfig",
        "spec.subdomain",
    }
    dns = problems(
        kinds.POD,
        pod(
            {
                "dnsPolicy": "None",
                "dnsConfig": {
                    "searches": ["ns.svc.cluster.local", "bad_domain"],
                    "options": [{"name": "ndots", "value": "5"}, {"value": "x"}],
                },
            }
        ),
    )
    assert set(dns) == {
        "spec.dnsConfig.nameservers",
        "spec.dnsConfig.searches[1]",
        "spec.dnsConfig.options[1].name",
    }
    assert "at least one DNS nameserver" in dns["spec.dnsConfig.nameservers"]
    many = problems(kinds.POD, pod({"dnsConfig": {"nameservers": ["1.1.1.1"] * 4 + ["x"]}}))
    assert "more than 3 nameservers" in many["spec.dnsConfig.nameservers"]
    assert "spec.dnsConfig.nameservers[4]" in many
    assert problems(kinds.POD, pod({"dnsPolicy": "Sometimes"}))["spec.dnsPolicy"].startswith(
        'Unsupported value: "Sometimes"'
    )


# -------------------------------------------------------------------- Service


def test_external_name_and_load_balancer_services() -> None:
    base = {"metadata": {"name": "s", "namespace": "default"}}
    ext = {**base, "spec": {"type": "ExternalName", "externalName": "db.example.com."}}
    assert not problems(kinds.SERVICE, ext)
    missing = {**base, "spec": {"type": "ExternalName", "clusterIP": "10.96.0.5"}}
    found = problems(kinds.SERVICE, missing)
    assert set(found) == {"spec.externalName", "spec.clusterIP"}
    lb = {**base, "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "nodePort": 30080}],
                           "externalIPs": ["192.0.2.10", "nope"]}}  # fmt: skip
    assert list(problems(kinds.SERVICE, lb)) == ["spec.externalIPs[1]"]
    stray = {**base, "spec": {"ports": [{"port": 80}], "externalName": "x.example.com"}}
    assert list(problems(kinds.SERVICE, stray)) == ["spec.externalName"]


# ---------------------------------------------------------------------- authz


@pytest.fixture
async def authz(tmp_path: Path) -> AsyncIterator[tuple[Authorizer, Master]]:
    master = Master(MasterConfig(listen="127.0.0.1:0", data_dir=tmp_path, tls=False,
                                 controllers=set()))  # fmt: skip
    await master.store.open()
    await master._ensure_namespaces()
    try:
        yield Authorizer(master.registries), master
    finally:
        await master.store.close()
        await master.supervisor.stop()


def allowed(authz: Authorizer, who: Identity, kind: kinds.Kind, method: str, req: object) -> bool:
    try:
        authz.check_kind(kind, method, who, req)
    except ApiError as refused:
        assert refused.code == grpc.StatusCode.PERMISSION_DENIED
        assert f"user {who}" in refused.message
        return False
    return True


async def test_view_reads_config_maps_but_not_secrets(
    authz: tuple[Authorizer, Master],
) -> None:
    checker, _ = authz
    view = Identity("vi", (identity.GROUP_VIEW,))
    edit = Identity("ed", (identity.GROUP_EDIT,))
    get = meta_pb2.GetRequest(name="s", namespace="default")
    for method in ("Get", "List", "Watch"):
        request = get if method == "Get" else meta_pb2.ListRequest(namespace="default")
        assert allowed(checker, view, kinds.CONFIG_MAP, method, request)
        assert not allowed(checker, view, kinds.SECRET, method, request)
        assert allowed(checker, edit, kinds.SECRET, method, request)
    with pytest.raises(ApiError, match="the view role may not read secrets"):
        checker.check_kind(kinds.SECRET, "Get", view, get)


async def test_nodes_read_only_what_their_pods_use(authz: tuple[Authorizer, Master]) -> None:
    checker, master = authz
    w1 = identity.node_identity("w1")
    bound = build(
        kinds.POD,
        pod(
            {
                "nodeName": "w1",
                "volumes": [
                    {"name": "s", "secret": {"secretName": "mounted"}},
                    {"name": "p", "projected": {"sources": [{"configMap": {"name": "projected"}}]}},
                ],
                "containers": [
                    {
                        "name": "c",
                        "image": "busybox:1.36",
                        "env": [{"name": "T", "valueFrom": {
                            "secretKeyRef": {"name": "env-secret", "key": "k"}}}],
                        "envFrom": [{"configMapRef": {"name": "env-cm"}}],
                    }
                ],
            }
        ),
    )  # fmt: skip
    await master.registries["Pod"].create(bound)
    elsewhere = build(kinds.POD, pod({"nodeName": "w2", "volumes": [
        {"name": "s", "secret": {"secretName": "other-node"}}]}))  # fmt: skip
    elsewhere.metadata.name = "p2"
    await master.registries["Pod"].create(elsewhere)

    def get(kind: kinds.Kind, name: str) -> bool:
        return allowed(
            checker, w1, kind, "Get", meta_pb2.GetRequest(name=name, namespace="default")
        )

    def watch(kind: kinds.Kind, selector: str, namespace: str = "default") -> bool:
        request = meta_pb2.WatchRequest(namespace=namespace, field_selector=selector)
        return allowed(checker, w1, kind, "Watch", request)

    assert get(kinds.SECRET, "mounted") and get(kinds.SECRET, "env-secret")
    assert get(kinds.CONFIG_MAP, "projected") and get(kinds.CONFIG_MAP, "env-cm")
    assert not get(kinds.SECRET, "other-node")  # used only by a pod on another node
    assert not get(kinds.SECRET, "env-cm")  # a ConfigMap's name does not open a Secret
    assert watch(kinds.SECRET, "metadata.name=mounted")
    assert not watch(kinds.SECRET, "")  # never all of a namespace's secrets
    assert not watch(kinds.SECRET, "metadata.name=mounted", namespace="")
    assert not watch(kinds.CONFIG_MAP, "metadata.name=unused")
    update = core_pb2.UpdateSecretRequest()
    update.secret.metadata.name = "mounted"
    update.secret.metadata.namespace = "default"
    assert not allowed(checker, w1, kinds.SECRET, "Update", update)


# --------------------------------------------------------------------- cipher


def test_local_key_is_made_once_and_kept(tmp_path: Path) -> None:
    first = ProtoCodec.for_master(tmp_path, tls=False)
    secret = core_pb2.Secret(type="Opaque")
    secret.metadata.name, secret.metadata.namespace = "s", "default"
    secret.data["k"] = b"value"
    sealed = first.encode(secret)
    key_text = (tmp_path / LOCAL_KEY_FILE).read_text()
    second = ProtoCodec.for_master(tmp_path, tls=False)
    assert second.decode("/secrets/default/s", sealed) == secret
    assert (tmp_path / LOCAL_KEY_FILE).read_text() == key_text
    # Two encodings of one value differ (random nonce), both decrypt.
    assert first.encode(secret) != sealed


def test_ca_derived_key_is_stable_and_not_the_ca_key(tmp_path: Path) -> None:
    cluster_ca.load_or_create(tmp_path, listen=())
    ca_key = (tmp_path / "pki" / "ca.key").read_bytes()
    assert derive_key(ca_key) == derive_key(ca_key)
    assert len(derive_key(ca_key)) == 32
    assert derive_key(ca_key) not in ca_key


def test_tls_master_without_ca_key_says_why(tmp_path: Path) -> None:
    cipher = SecretsCipher.for_data_dir(tmp_path, tls=True)
    with pytest.raises(SecretDecryptionError, match=r"ca\.key is missing"):
        cipher.encrypt("/secrets/default/s", b"x")


@pytest.mark.parametrize("tail", [b"", b"short", b"n" * 12])
def test_a_truncated_encrypted_secret_is_a_decryption_error(tail: bytes) -> None:
    """A value cut short (no whole nonce, or no tag) is 'damaged', not a ValueError
    the store's loops do not expect."""
    codec = ProtoCodec(SecretsCipher("ca", keys={"ca": b"k" * 32}))
    with pytest.raises(SecretDecryptionError, match="damaged"):
        codec.decode("/secrets/default/s", ENCRYPTION_PREFIX + b"ca:" + tail)
