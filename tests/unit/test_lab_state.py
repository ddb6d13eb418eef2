"""The lab's record of what it made (no root needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kubeling.lab.lab import Lab, LabState, MasterState, NodeState, Proc


def test_state_survives_a_round_trip(tmp_path: Path) -> None:
    state = LabState(
        prefix="kl-",
        master_netns="kl-net",
        nodes=[
            NodeState("worker-1", "kl-worker-1", "10.99.0.11", "kl-w1", "10.244.0.0/24",
                      containerd=Proc(11, "/x/containerd.toml"), kubelet=Proc(12, "--node-name w")),
        ],
        master=Proc(10, "/x/master"),
        kubelet_args=["--lease-duration", "8"],
    )  # fmt: skip
    path = tmp_path / "lab.json"
    state.save(path)
    assert LabState.load(path) == state
    lab = Lab(tmp_path)
    assert lab.state == state
    assert lab.node("worker-1").pod_cidr == "10.244.0.0/24"
    assert lab.exec_command("worker-1", ["ip", "addr"]) == [
        "nsenter", "--net=/var/run/netns/kl-worker-1", "--", "ip", "addr",
    ]  # fmt: skip
    assert lab.server == f"unix:{tmp_path.resolve() / 'master.sock'}"


def test_several_masters_and_their_etcd_members_survive_a_round_trip(tmp_path: Path) -> None:
    state = LabState(
        prefix="kl-",
        master_netns="kl-net",
        store="etcd",
        masters=[
            MasterState("master-1", "kl-master-1", "10.99.0.1", "kl-m1",
                        process=Proc(20, "--data-dir /x/masters/master-1"),
                        etcd=Proc(21, "--name etcd-1")),
            MasterState("master-2", "kl-master-2", "10.99.0.2", "kl-m2"),
        ],
    )  # fmt: skip
    path = tmp_path / "lab.json"
    state.save(path)
    assert LabState.load(path) == state
    lab = Lab(tmp_path)
    assert lab.master_of("etcd-1").etcd == Proc(21, "--name etcd-1")
    assert lab.master_addresses(6443) == "10.99.0.1:6443,10.99.0.2:6443"
    assert lab.etcd_endpoints() == "10.99.0.1:2379,10.99.0.2:2379"
    # A record from before several masters existed reads as one SQLite master.
    old = LabState(prefix="kl-", master_netns="kl-net", master=Proc(10, "/x/master"))
    old.save(path)
    raw = json.loads(path.read_text())
    del raw["store"], raw["masters"]
    path.write_text(json.dumps(raw))
    loaded = LabState.load(path)
    assert loaded == old and loaded.store == "sqlite" and loaded.masters == []


def test_a_process_is_only_ours_while_its_command_line_says_so() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "marker-7"])
    try:
        deadline = time.monotonic() + 10  # until the child has exec'd
        while not Proc(child.pid, "marker-7").alive():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # The same PID with another command line (a reused PID) is not signalled.
        assert not Proc(child.pid, "marker-8").alive()
        Proc(child.pid, "marker-8").stop()
        assert child.poll() is None
        Proc(child.pid, "marker-7").stop()
        assert child.wait(timeout=10) is not None
    finally:
        if child.poll() is None:
            child.kill()
    assert not Proc(os.getpid() + 10_000_000, "x").alive()
