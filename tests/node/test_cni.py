from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubeling.node.cni import CONFLIST_NAME, pod_cidr_gateway, write_bridge_cni_config


def test_gateway_is_first_host() -> None:
    assert pod_cidr_gateway("10.244.1.0/24") == "10.244.1.1"
    assert pod_cidr_gateway("10.244.0.0/16") == "10.244.0.1"
    with pytest.raises(ValueError):
        pod_cidr_gateway("10.244.1.5/24")  # host bits set: not a CIDR
    with pytest.raises(ValueError):
        pod_cidr_gateway("10.0.0.0/31")


def test_conflist(tmp_path: Path) -> None:
    path = write_bridge_cni_config(
        tmp_path / "net.d",
        pod_cidr="10.244.1.0/24",
        mtu=1450,
        routes=["10.244.0.0/16", "10.96.0.0/12", "10.244.1.0/24", "10.96.0.0/12"],
        ipam_data_dir="/tmp/x/ipam",
    )
    assert path == tmp_path / "net.d" / CONFLIST_NAME
    assert [p.name for p in path.parent.iterdir()] == [CONFLIST_NAME]  # no temp left
    conf = json.loads(path.read_text())
    assert conf["name"] == "kubeling"
    bridge, portmap = conf["plugins"]
    assert bridge["type"] == "bridge"
    assert bridge["bridge"] == "kubeling0"
    assert bridge["isGateway"] is True
    assert bridge["ipMasq"] is False
    assert bridge["hairpinMode"] is True
    assert bridge["mtu"] == 1450
    ipam = bridge["ipam"]
    assert ipam["type"] == "host-local"
    assert ipam["ranges"] == [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}]]
    # The node's own subnet is on-link, duplicates are dropped, no default route.
    assert ipam["routes"] == [
        {"dst": "10.244.0.0/16", "gw": "10.244.1.1"},
        {"dst": "10.96.0.0/12", "gw": "10.244.1.1"},
    ]
    assert ipam["dataDir"] == "/tmp/x/ipam"
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}


def test_conflist_defaults_and_validation(tmp_path: Path) -> None:
    conf = json.loads(write_bridge_cni_config(tmp_path, pod_cidr="10.1.2.0/24").read_text())
    ipam = conf["plugins"][0]["ipam"]
    assert ipam["routes"] == []
    assert "dataDir" not in ipam
    with pytest.raises(ValueError):
        write_bridge_cni_config(tmp_path, pod_cidr="10.1.2.0/24", bridge="x" * 16)
    with pytest.raises(ValueError):
        write_bridge_cni_config(tmp_path, pod_cidr="fd00::/64")
