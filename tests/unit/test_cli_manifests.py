"""Manifest reading for the CLI: normalisation, field paths, documents."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from kubeling.api import kinds
from kubeling.cli.errors import CliError
from kubeling.cli.manifests import load_manifests, parse_manifests, quantity_text
from kubeling.v1 import apps_pb2, core_pb2

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: web
    image: nginx
    resources:
      requests: {cpu: 0.25, memory: 64Mi}
      limits: {cpu: 2}
    readinessProbe:
      httpGet: {path: /, port: 8080}
    livenessProbe:
      tcpSocket: {port: http}
"""


def error_of(text: str, source: str = "m.yaml") -> str:
    with pytest.raises(CliError) as info:
        parse_manifests(text, source)
    return info.value.message


def test_pod_parses_with_quantities_as_strings() -> None:
    [manifest] = parse_manifests(POD, "pod.yaml")
    assert manifest.kind is kinds.POD
    pod = manifest.obj
    assert isinstance(pod, core_pb2.Pod)
    container = pod.spec.containers[0]
    assert dict(container.resources.requests) == {"cpu": "0.25", "memory": "64Mi"}
    assert dict(container.resources.limits) == {"cpu": "2"}
    # IntOrString ports keep their JSON type.
    assert container.readiness_probe.http_get.port.number_value == 8080
    assert container.liveness_probe.tcp_socket.port.string_value == "http"
    assert manifest.label == "pod.yaml: document 1 (Pod web)"


def test_node_capacity_numbers_become_quantities() -> None:
    text = (
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n"
        "status: {capacity: {cpu: 4, pods: 110}}\n"
    )
    [manifest] = parse_manifests(text, "node.yaml")
    assert dict(manifest.obj.status.capacity) == {"cpu": "4", "pods": "110"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "text"), [(1, "1"), (0.5, "0.5"), (2.0, "2"), (1e20, "1e+20"), (-3, "-3")]
)
def test_quantity_text(value: float, text: str) -> None:
    assert quantity_text(value) == text


def test_multi_document_yaml_skips_empty_documents() -> None:
    text = "---\n" + POD + "---\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: ns}\n"
    manifests = parse_manifests(text, "all.yaml")
    assert [(m.kind.name, m.name, m.where) for m in manifests] == [
        ("Pod", "web", "document 1"),
        ("Namespace", "ns", "document 3"),
    ]


def test_list_documents_are_expanded() -> None:
    text = (
        "apiVersion: v1\nkind: List\nitems:\n"
        "- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n"
        "- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n"
    )
    manifests = parse_manifests(text, "list.yaml")
    assert [m.name for m in manifests] == ["a", "b"]
    assert manifests[1].where == "document 1, item 2"


def test_unknown_field_names_document_and_path() -> None:
    text = (
        POD
        + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
        + ("spec:\n  template:\n    spec:\n      contaners: []\n")
    )
    assert error_of(text, "deploy.yaml") == (
        "error: deploy.yaml: document 2 (Deployment web): "
        'unknown field "spec.template.spec.contaners"'
    )


def test_snake_case_field_names_are_unknown() -> None:
    text = POD.replace("spec:\n", "spec:\n  restart_policy: Never\n", 1)
    assert 'unknown field "spec.restart_policy"' in error_of(text)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (
            "{version: 1}",
            'metadata.labels[version]: expected a string, got an integer (1) (quote it: "1")',
        ),
        ("{canary: true}", "metadata.labels[canary]: expected a string, got a boolean (true)"),
        ("[a]", "metadata.labels: expected a map of strings, got a list"),
    ],
)
def test_non_string_labels_are_rejected(labels: str, expected: str) -> None:
    text = POD.replace("labels: {app: web}", f"labels: {labels}")
    assert expected in error_of(text)


def test_selector_and_node_selector_values_must_be_strings() -> None:
    text = POD.replace("spec:\n", "spec:\n  nodeSelector: {zone: 3}\n", 1)
    assert "spec.nodeSelector[zone]: expected a string" in error_of(text)


def test_type_errors_name_the_path() -> None:
    text = POD.replace("image: nginx", "image: nginx\n    ports: [{containerPort: web}]")
    assert "spec.containers[0].ports[0].containerPort: expected an integer" in error_of(text)
    text = POD.replace("image: nginx", "image: 7")
    assert "spec.containers[0].image: expected a string, got an integer (7)" in error_of(text)


def test_kind_and_api_version_checks() -> None:
    assert 'no matches for kind "Widget" in version "v1"' in error_of(
        "apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n"
    )
    assert 'apiVersion "v1" is wrong for kind Deployment: use "apps/v1"' in error_of(
        "apiVersion: v1\nkind: Deployment\nmetadata: {name: w}\n"
    )
    assert '"kind" is missing' in error_of("apiVersion: v1\nmetadata: {name: w}\n")
    assert "metadata.name is required" in error_of("apiVersion: v1\nkind: Namespace\n")
    assert "expected an object, got a list" in error_of("- a\n- b\n")


def test_invalid_yaml_and_duplicate_keys() -> None:
    assert error_of("a: [\n").startswith("error: m.yaml: invalid YAML: ")
    duplicate = "apiVersion: v1\nkind: Namespace\nkind: Namespace\nmetadata: {name: x}\n"
    assert 'duplicate key "kind"' in error_of(duplicate)


def test_output_of_get_reads_back() -> None:
    # Proto JSON writes int64 as strings and times as RFC 3339; both must parse.
    text = (
        "apiVersion: apps/v1\nkind: Deployment\n"
        "metadata: {name: web, generation: '3', creationTimestamp: 2024-01-02T03:04:05Z}\n"
        "spec: {template: {spec: {terminationGracePeriodSeconds: '30'}}}\n"
    )
    [manifest] = parse_manifests(text, "out.yaml")
    deploy = manifest.obj
    assert isinstance(deploy, apps_pb2.Deployment)
    assert deploy.metadata.generation == 3
    assert deploy.metadata.creation_timestamp.seconds == 1704164645
    assert deploy.spec.template.spec.termination_grace_period_seconds == 30


def test_load_reads_directories_sorted_and_stdin(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n")
    (tmp_path / "a.json").write_text(
        '{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}'
    )
    (tmp_path / "c.txt").write_text("ignored")
    stdin = io.StringIO("apiVersion: v1\nkind: Namespace\nmetadata: {name: s}\n")
    manifests = load_manifests([str(tmp_path), "-"], stdin)
    assert [m.name for m in manifests] == ["a", "b", "s"]
    assert manifests[2].source == "STDIN"
    with pytest.raises(CliError, match="does not exist"):
        load_manifests([str(tmp_path / "missing.yaml")], stdin)
