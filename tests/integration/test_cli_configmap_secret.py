"""ConfigMaps and Secrets through the `kubeling` console script against a real
master: create from literals and files, get tables, describe without values,
-o yaml with base64 data, apply of manifests with stringData, immutability."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from tests.integration.test_cli import kubeling, ok, table, write
from tests.support.processes import MasterProcess

SECRET_MANIFEST = """\
apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: default
type: Opaque
data:
  user: YWRtaW4=
stringData:
  password: s3cr3t-from-manifest
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: app
  namespace: default
data:
  mode: production
  app.properties: |
    color=blue
    size=3
"""


def test_create_configmap_from_literals_and_files(master: MasterProcess, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "a.conf").write_text("alpha\n")
    (conf / "b.conf").write_text("beta\n")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\xff\x00\xfe")
    env_file = write(tmp_path, "vars.env", "# comment\nLEVEL=debug\n\nREGION=eu\n")
    out = ok(
        master,
        "create", "configmap", "settings",
        "--from-literal", "greeting=hello world",
        "--from-file", str(conf),
        "--from-file", f"raw={blob}",
        "--from-env-file", env_file,
    )  # fmt: skip
    assert out.strip() == "configmap/settings created"
    data = yaml.safe_load(ok(master, "get", "configmap", "settings", "-o", "yaml"))
    assert data["kind"] == "ConfigMap"
    assert data["data"] == {
        "greeting": "hello world",
        "a.conf": "alpha\n",
        "b.conf": "beta\n",
        "LEVEL": "debug",
        "REGION": "eu",
    }
    # Not UTF-8: kept as bytes, base64 in YAML.
    assert base64.b64decode(data["binaryData"]["raw"]) == b"\xff\x00\xfe"
    rows = table(ok(master, "get", "cm"))
    assert rows[0] == ["NAME", "DATA", "AGE"]
    assert next(r for r in rows if r[0] == "settings")[:2] == ["settings", "6"]
    described = ok(master, "describe", "configmap", "settings")
    assert "greeting:" in described and "hello world" in described


def test_create_configmap_refuses_duplicate_keys(master: MasterProcess) -> None:
    result = kubeling(
        master, "create", "configmap", "dup", "--from-literal", "k=1", "--from-literal", "k=2"
    )
    assert result.returncode != 0
    assert "'k'" in result.stderr and "already exists" in result.stderr


def test_create_secret_generic_and_show_no_values(master: MasterProcess, tmp_path: Path) -> None:
    key_file = tmp_path / "tls.key"
    key_file.write_bytes(b"-----BEGIN KEY-----\nvery-private-bytes\n")
    out = ok(
        master,
        "create", "secret", "generic", "creds",
        "--from-literal", "password=hunter2-literal",
        "--from-file", f"key={key_file}",
    )  # fmt: skip
    assert out.strip() == "secret/creds created"
    rows = table(ok(master, "get", "secrets"))
    assert rows[0] == ["NAME", "TYPE", "DATA", "AGE"]
    assert next(r for r in rows if r[0] == "creds")[:3] == ["creds", "Opaque", "2"]

    described = ok(master, "describe", "secret", "creds")
    assert "hunter2-literal" not in described
    assert "very-private-bytes" not in described
    assert base64.b64encode(b"hunter2-literal").decode() not in described
    assert "password:  15 bytes" in described
    assert f"key:  {len(key_file.read_bytes())} bytes" in described
    assert "Type:" in described and "Opaque" in described

    data = yaml.safe_load(ok(master, "get", "secret", "creds", "-o", "yaml"))
    assert data["type"] == "Opaque"
    assert data["data"]["password"] == base64.b64encode(b"hunter2-literal").decode()
    assert base64.b64decode(data["data"]["key"]) == key_file.read_bytes()
    assert "stringData" not in data


def test_dry_run_prints_without_creating(master: MasterProcess) -> None:
    out = ok(
        master,
        "create", "secret", "generic", "dry", "--from-literal", "a=b",
        "--dry-run=client", "-o", "yaml",
    )  # fmt: skip
    data = yaml.safe_load(out)
    assert data["kind"] == "Secret" and data["data"] == {"a": "Yg=="}
    result = kubeling(master, "get", "secret", "dry")
    assert result.returncode != 0 and "not found" in result.stderr


def test_apply_manifests_with_string_data(master: MasterProcess, tmp_path: Path) -> None:
    path = write(tmp_path, "objs.yaml", SECRET_MANIFEST)
    out = ok(master, "apply", "-f", path)
    assert "secret/db created" in out and "configmap/app created" in out
    secret = yaml.safe_load(ok(master, "get", "secret", "db", "-o", "yaml"))
    # stringData is merged into data and never stored.
    assert "stringData" not in secret
    assert base64.b64decode(secret["data"]["password"]) == b"s3cr3t-from-manifest"
    assert base64.b64decode(secret["data"]["user"]) == b"admin"
    cm = yaml.safe_load(ok(master, "get", "configmap", "app", "-o", "json"))
    assert cm["data"]["app.properties"] == "color=blue\nsize=3\n"
    # Applying the same manifest again changes nothing.
    again = ok(master, "apply", "-f", path)
    assert "configmap/app unchanged" in again


def test_immutable_configmap_refuses_changes(master: MasterProcess, tmp_path: Path) -> None:
    ok(master, "create", "configmap", "frozen", "--from-literal", "k=v1", "--immutable")
    manifest = write(
        tmp_path,
        "frozen.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: frozen}\n"
        "immutable: true\ndata: {k: v2}\n",
    )
    result = kubeling(master, "apply", "-f", manifest)
    assert result.returncode != 0
    assert "data" in result.stderr and "immutable" in result.stderr
    data = yaml.safe_load(ok(master, "get", "cm", "frozen", "-o", "yaml"))
    assert data["data"] == {"k": "v1"}


def test_invalid_keys_are_refused_with_the_field_path(master: MasterProcess) -> None:
    result = kubeling(master, "create", "configmap", "bad", "--from-literal", "no/slash=1")
    assert result.returncode != 0
    assert "data[no/slash]" in result.stderr
    assert "a valid config key must consist of alphanumeric characters" in result.stderr


SERVICES = """\
apiVersion: v1
kind: Service
metadata: {name: upstream}
spec:
  type: ExternalName
  externalName: db.example.com
---
apiVersion: v1
kind: Service
metadata: {name: front}
spec:
  type: LoadBalancer
  selector: {app: front}
  externalIPs: [192.0.2.10]
  ports: [{port: 80}]
"""


def test_external_name_and_load_balancer_services(master: MasterProcess, tmp_path: Path) -> None:
    ok(master, "apply", "-f", write(tmp_path, "svc.yaml", SERVICES))
    upstream = yaml.safe_load(ok(master, "get", "svc", "upstream", "-o", "yaml"))
    # A DNS alias: no cluster IP is allocated.
    assert "clusterIP" not in upstream["spec"] and "clusterIPs" not in upstream["spec"]
    assert "External Name:" in ok(master, "describe", "svc", "upstream")
    front = yaml.safe_load(ok(master, "get", "svc", "front", "-o", "yaml"))
    assert front["spec"]["clusterIP"]
    assert 30000 <= front["spec"]["ports"][0]["nodePort"] <= 32767  # as a NodePort
    assert "192.0.2.10" in ok(master, "describe", "svc", "front")
    # The type of an ExternalName Service does not change in place.
    changed = SERVICES.split("---")[0].replace("ExternalName", "ClusterIP")
    changed = changed.replace("  externalName: db.example.com\n", "  ports: [{port: 80}]\n")
    result = kubeling(master, "apply", "-f", write(tmp_path, "changed.yaml", changed))
    assert result.returncode != 0 and "spec.type" in result.stderr
    ok(master, "delete", "svc", "upstream", "front")
