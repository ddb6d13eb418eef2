"""The lab's command lines (no root, nothing started): the master serves TLS with a
join port and the lab's address in its certificate; kubelet and proxy join with a
token file, the join port and the CA's pin, each with its own certificate folder,
and no secret is on any command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeling.common import pki
from kubeling.lab.lab import Lab, LabState, NodeState, Proc

TOKEN = "abcdef.0123456789abcdef"


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Lab, list[list[str]]]:
    lab = Lab(tmp_path)
    node = NodeState("worker-1", "kl-worker-1", "10.99.0.11", "kl-w1", "")
    lab.state = LabState(prefix="kl-", master_netns="kl-net", nodes=[node])
    # What the master makes at its first start.
    ca = pki.make_ca()
    admin = pki.issue(ca, "kubeling-admin", ["system:masters"])
    lab.pki_dir.mkdir(parents=True)
    for path, data in zip(
        lab.admin_files(), (ca.cert_pem, admin.cert_pem, admin.key_pem), strict=True
    ):
        path.write_bytes(data)
    lab.token_file("worker-1").parent.mkdir(parents=True)
    lab.token_file("worker-1").write_text(TOKEN + "\n")
    spawned: list[list[str]] = []

    def spawn(netns: str, log_name: str, command: list[str], marker: str) -> Proc:
        assert marker in " ".join(command)  # how `down` recognises the process
        spawned.append(command)
        return Proc(1, marker)

    monkeypatch.setattr(lab, "_spawn", spawn)
    monkeypatch.setattr(lab, "_wait_master", lambda: None)
    return lab, spawned


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_kubelet_and_proxy_join_with_a_file_the_join_port_and_the_pin(
    lab: tuple[Lab, list[list[str]]],
) -> None:
    the_lab, spawned = lab
    node = the_lab.node("worker-1")
    the_lab._start_kubelet(node, the_lab.node_dir("worker-1"))
    the_lab._start_proxy(node, the_lab.node_dir("worker-1"))
    kubelet, proxy = spawned
    pin = pki.ca_pin(the_lab.admin_files()[0].read_bytes())
    for command, cert_dir in ((kubelet, "kubelet-pki"), (proxy, "proxy-pki")):
        assert not any("0123456789abcdef" in arg for arg in command)
        assert "--token" not in command and "--insecure" not in command
        assert flag(command, "--token-file") == str(the_lab.token_file("worker-1"))
        assert flag(command, "--join-address") == "10.99.0.1:6444"
        assert flag(command, "--discovery-token-ca-cert-hash") == pin
        assert flag(command, "--cert-dir") == str(the_lab.node_dir("worker-1") / cert_dir)


def test_the_master_serves_tls_for_the_lab_address(lab: tuple[Lab, list[list[str]]]) -> None:
    the_lab, spawned = lab
    the_lab.start_master()
    (master,) = spawned
    assert "--insecure" not in master
    assert flag(master, "--listen") == f"10.99.0.1:6443,{the_lab.server}"
    assert flag(master, "--join-listen") == "10.99.0.1:6444"
    assert flag(master, "--tls-san") == "10.99.0.1"


def test_the_labs_config_names_the_socket_and_the_admins_files(
    lab: tuple[Lab, list[list[str]]],
) -> None:
    from kubeling.cli import config

    the_lab, _ = lab
    path = the_lab.write_config()
    assert path.stat().st_mode & 0o777 == 0o600
    target = config.resolve(None, path)
    assert target.server == the_lab.server
    assert target.credentials == the_lab.credentials()
    assert target.credentials.server_name == "localhost"
    # By path: the key stays where the master wrote it.
    assert "PRIVATE KEY" not in path.read_text()
