"""The lab's add-on plumbing without root: what lab.json records, the kubelets'
DNS flags, pod mode starting no proxy process, the manifests and what they need."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubeling.cli.main import build_parser
from kubeling.lab import addons
from kubeling.lab.lab import Lab, LabError, LabState, NodeState, Proc
from kubeling.node import imagebuild
from kubeling.v1 import core_pb2


def lab_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: LabState
) -> tuple[Lab, list[list[str]]]:
    lab = Lab(tmp_path)
    lab.state = state
    spawned: list[list[str]] = []

    def spawn(netns: str, log_name: str, command: list[str], marker: str) -> Proc:
        spawned.append(command)
        return Proc(1, marker)

    monkeypatch.setattr(lab, "_spawn", spawn)
    monkeypatch.setattr(lab, "_join_args", lambda name, cert_dir: [])
    return lab, spawned


def node() -> NodeState:
    return NodeState("worker-1", "kl-worker-1", "10.99.0.11", "kl-w1", "10.244.0.0/24")


def test_the_proxy_mode_and_add_ons_survive_a_round_trip(tmp_path: Path) -> None:
    state = LabState(
        prefix="kl-", master_netns="kl-net", nodes=[node()], proxy_mode="pod",
        addons=[addons.PROXY, addons.DNS],
    )  # fmt: skip
    path = tmp_path / "lab.json"
    state.save(path)
    assert LabState.load(path) == state
    # A record from before the add-ons: processes, no DNS.
    raw = json.loads(path.read_text())
    del raw["proxy_mode"], raw["addons"]
    path.write_text(json.dumps(raw))
    old = LabState.load(path)
    assert old.proxy_mode == "process" and old.addons == [] and not old.cluster_dns


def test_kubelets_name_the_cluster_dns_only_with_the_dns_add_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for wanted, expected in (([addons.DNS], True), ([], False)):
        state = LabState(prefix="kl-", master_netns="kl-net", nodes=[node()], addons=wanted)
        lab, spawned = lab_with(tmp_path, monkeypatch, state)
        lab._start_kubelet(lab.node("worker-1"), tmp_path)
        command = spawned[-1]
        assert ("--cluster-dns" in command) is expected
        if expected:
            assert command[command.index("--cluster-dns") + 1] == "10.96.0.10"
            assert command[command.index("--cluster-domain") + 1] == "cluster.local"


def test_pod_mode_starts_no_proxy_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = LabState(prefix="kl-", master_netns="kl-net", nodes=[node()], proxy_mode="pod")
    lab, _ = lab_with(tmp_path, monkeypatch, state)
    assert lab.components() == ("containerd", "kubelet")
    started: list[str] = []
    monkeypatch.setattr(lab, "start_component", lambda name, c: started.append(c))
    monkeypatch.setattr(lab, "stop_node", lambda name: None)
    lab.start_node("worker-1")
    assert started == ["containerd", "kubelet"]
    monkeypatch.undo()
    lab, _ = lab_with(tmp_path, monkeypatch, state)
    with pytest.raises(LabError, match="is a pod of DaemonSet kube-system/kube-proxy"):
        lab.start_component("worker-1", "proxy")
    with pytest.raises(LabError, match="is a pod"):
        lab.kill("worker-1", "proxy")


def test_the_manifests_run_the_image_this_kubeling_builds() -> None:
    for addon in (addons.DNS, addons.PROXY):
        images = addons.manifest_images(addon)
        assert {imagebuild.normalize_name(i) for i in images} == {imagebuild.KUBELING_IMAGE}


def test_what_the_manifests_need_is_made_for_them() -> None:
    secret, config_map = addons.proxy_objects(
        "abcdef.0123456789abcdef", "10.99.0.1:6443", "sha256:00", "10.244.0.0/16"
    )
    assert isinstance(secret, core_pb2.Secret) and secret.metadata.name == "kube-proxy-bootstrap"
    assert secret.data["token"] == b"abcdef.0123456789abcdef"
    assert isinstance(config_map, core_pb2.ConfigMap)
    assert dict(config_map.data) == {
        "master": "10.99.0.1:6443", "ca-cert-hash": "sha256:00", "cluster-cidr": "10.244.0.0/16",
    }  # fmt: skip
    dns_secret, dns_config = addons.dns_objects("server: x\n")
    assert (
        dns_secret.metadata.name == "kube-dns-credentials"
        and dns_secret.data["config"] == b"server: x\n"
    )
    assert dns_config.metadata.name == "kube-dns" and dns_config.data["upstream"] == ""
    # Every name the manifests read from them exists.
    text = "".join(addons.manifest_path(a).read_text() for a in (addons.DNS, addons.PROXY))
    for name, key in (("kube-proxy", "master"), ("kube-proxy", "ca-cert-hash"),
                      ("kube-proxy", "cluster-cidr"), ("kube-dns", "upstream")):  # fmt: skip
        assert f"configMapKeyRef: {{name: {name}, key: {key}}}" in text
    assert "secretName: kube-proxy-bootstrap" in text and "secretName: kube-dns-credentials" in text


def test_lab_up_takes_the_proxy_mode_and_no_dns() -> None:
    args = build_parser().parse_args(["lab", "up", "--proxy", "pod", "--no-dns"])
    assert args.proxy == "pod" and args.dns is False
    args = build_parser().parse_args(["lab", "up"])
    assert args.proxy == "process" and args.dns is True
