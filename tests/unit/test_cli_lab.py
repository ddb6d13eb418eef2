"""The lab's command lines (no root, nothing started): the master serves TLS with a
join port and the lab's address in its certificate; kubelet and proxy join with a
token file, the join port and the CA's pin, each with its own certificate folder,
and no secret is on any command line. With several masters on etcd: each master in
its own namespace on every etcd member, members over mutual TLS, nodes given every
master, and the CLI's socket kept on a running master."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubeling.common import pki
from kubeling.lab.lab import Lab, LabError, LabOptions, LabState, MasterState, NodeState, Proc

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


@pytest.fixture
def several(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Lab, list[list[str]]]:
    """A lab record with three masters on etcd (what `up --masters 3 --store etcd`
    writes), nothing started."""
    lab = Lab(tmp_path)
    masters = [
        MasterState(f"master-{i}", f"kl-master-{i}", f"10.99.0.{i}", f"kl-m{i}") for i in (1, 2, 3)
    ]
    node = NodeState("worker-1", "kl-worker-1", "10.99.0.11", "kl-w1", "")
    lab.state = LabState(
        prefix="kl-", master_netns="kl-net", nodes=[node], store="etcd", masters=masters
    )
    ca = pki.make_ca()
    admin = pki.issue(ca, "kubeling-admin", ["system:masters"])
    lab.pki_dir.mkdir(parents=True)
    for path, data in zip(
        lab.admin_files(), (ca.cert_pem, admin.cert_pem, admin.key_pem), strict=True
    ):
        path.write_bytes(data)
    spawned: list[list[str]] = []

    def spawn(netns: str, log_name: str, command: list[str], marker: str) -> Proc:
        assert marker in " ".join(command)
        spawned.append([netns, *command])
        return Proc(1, marker)

    monkeypatch.setattr(lab, "_spawn", spawn)
    monkeypatch.setattr(lab, "_wait_master", lambda name="master": None)
    monkeypatch.setattr(lab, "_wait_etcd", lambda master: None)
    monkeypatch.setattr(lab, "_point_socket", lambda: None)
    return lab, spawned


def test_with_several_masters_each_serves_its_address_on_every_etcd_member(
    several: tuple[Lab, list[list[str]]],
) -> None:
    the_lab, spawned = several
    assert the_lab.pki_dir == the_lab.dir / "masters" / "master-1" / "pki"
    the_lab.start_master("master-2")
    (master,) = spawned
    assert master[0] == "kl-master-2"  # its own namespace
    assert flag(master, "--listen") == f"10.99.0.2:6443,unix:{the_lab.master_socket_of('master-2')}"
    assert flag(master, "--join-listen") == "10.99.0.2:6444"
    assert flag(master, "--tls-san") == "10.99.0.2"
    assert flag(master, "--data-dir") == str(the_lab.dir / "masters" / "master-2")
    assert flag(master, "--store") == "etcd://10.99.0.1:2379,10.99.0.2:2379,10.99.0.3:2379"
    # TLS to etcd: the master's own client certificate from the cluster CA, no file flags.
    assert "--insecure" not in master and "--etcd-keyfile" not in master
    with pytest.raises(LabError, match="etcd member, not a master"):
        the_lab.start_master("etcd-2")


def test_etcd_members_talk_mutual_tls_on_their_masters_address(
    several: tuple[Lab, list[list[str]]],
) -> None:
    the_lab, spawned = several
    the_lab.start_etcd("etcd-3")
    (etcd,) = spawned
    pki_dir = the_lab.etcd_dir("etcd-3") / "pki"
    assert etcd[0] == "kl-master-3"
    assert flag(etcd, "--name") == "etcd-3"
    assert flag(etcd, "--data-dir") == str(the_lab.etcd_dir("etcd-3") / "data")
    assert flag(etcd, "--listen-client-urls") == "https://10.99.0.3:2379"
    assert flag(etcd, "--listen-peer-urls") == "https://10.99.0.3:2380"
    assert flag(etcd, "--initial-cluster") == ",".join(
        f"etcd-{i}=https://10.99.0.{i}:2380" for i in (1, 2, 3)
    )
    assert not any("http://" in arg for arg in etcd)
    for required in ("--client-cert-auth", "--peer-client-cert-auth"):
        assert required in etcd
    assert f"--trusted-ca-file={pki_dir / 'ca.crt'}" in etcd
    assert f"--peer-trusted-ca-file={pki_dir / 'ca.crt'}" in etcd
    assert f"--cert-file={pki_dir / 'server.crt'}" in etcd
    assert f"--peer-cert-file={pki_dir / 'peer.crt'}" in etcd
    assert "--peer-cert-allowed-cn=kubeling:etcd-peer" in etcd


def test_nodes_are_given_every_master(several: tuple[Lab, list[list[str]]]) -> None:
    the_lab, spawned = several
    node = the_lab.node("worker-1")
    the_lab.token_file("worker-1").parent.mkdir(parents=True)
    the_lab._start_kubelet(node, the_lab.node_dir("worker-1"))
    the_lab._start_proxy(node, the_lab.node_dir("worker-1"))
    for command in spawned:
        assert flag(command, "--master") == "10.99.0.1:6443,10.99.0.2:6443,10.99.0.3:6443"
        assert flag(command, "--join-address") == "10.99.0.1:6444,10.99.0.2:6444,10.99.0.3:6444"


def test_masters_and_members_are_named_for_stop_start_kill_and_exec(
    several: tuple[Lab, list[list[str]]],
) -> None:
    the_lab, _ = several
    assert the_lab.master_of("etcd-2").name == "master-2"
    assert the_lab.exec_command("etcd-1", ["ip", "addr"])[1] == "--net=/var/run/netns/kl-master-1"
    assert the_lab.exec_command("master-3", ["true"])[1] == "--net=/var/run/netns/kl-master-3"
    with pytest.raises(LabError, match=r"no node \"master\".*master-1, master-2, master-3, etcd-1"):
        the_lab.exec_command("master", ["true"])
    with pytest.raises(LabError, match="etcd-3 does not run"):
        the_lab.kill("etcd-3")
    rows = {row[0]: row for row in the_lab.status()}
    assert rows["master-2"][1:3] == ("kl-master-2", "10.99.0.2:6443")
    assert rows["etcd-2"][1:3] == ("kl-master-2", "10.99.0.2:2379")
    assert rows["etcd-2"][4] == "DOWN"


def test_the_cli_socket_follows_a_running_master(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    # Our own PID with a marker from our command line runs; PID 1 with this one does not.
    ours = Path(f"/proc/{os.getpid()}/cmdline").read_bytes().split(b"\0")[0].decode()
    running = Proc(os.getpid(), ours)
    assert running.alive()
    masters = [MasterState(f"master-{i}", f"kl-master-{i}", f"10.99.0.{i}", "") for i in (1, 2, 3)]
    lab.state = LabState(prefix="kl-", master_netns="kl-net", store="etcd", masters=masters)
    masters[1].process = running
    lab._point_socket()
    assert os.readlink(lab.master_socket) == str(lab.master_socket_of("master-2"))
    masters[0].process = running  # master-1 back: the socket stays where it works
    lab._point_socket()
    assert os.readlink(lab.master_socket) == str(lab.master_socket_of("master-2"))
    masters[1].process = Proc(1, "no such marker")
    lab._point_socket()
    assert os.readlink(lab.master_socket) == str(lab.master_socket_of("master-1"))
    masters[0].process = None  # none runs: left as it is
    lab._point_socket()
    assert os.readlink(lab.master_socket) == str(lab.master_socket_of("master-1"))


def test_several_masters_need_etcd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    lab = Lab(tmp_path)
    with pytest.raises(LabError, match="--masters 3 needs --store etcd"):
        lab.up(LabOptions(masters=3))
    with pytest.raises(LabError, match="--masters must be between 1 and 9"):
        lab.up(LabOptions(masters=10, store="etcd"))
    with pytest.raises(LabError, match="--store must be one of sqlite, etcd"):
        lab.up(LabOptions(store="mysql"))
    assert lab.state is None and not (tmp_path / "lab.json").exists()
