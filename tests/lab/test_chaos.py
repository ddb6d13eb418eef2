"""Chaos on a 3-worker lab (kubeling.lab): while a Deployment of 6 behind a ClusterIP
Service rolls out, kill -9 kubelets, kube-proxies, containerds and the master in a
seeded random order (tests/support/chaos.py: one rollout per round, in each round the
master and one kubelet, one proxy and one containerd of seeded nodes, one at a time,
each restarted after a seeded pause as systemd would). Meanwhile a client in every
node's namespace calls the ClusterIP ten times a second (a new connection each), and
a writer creates Leases and bumps a counter Lease, recording what the master
acknowledged. bench/soak.py runs the same for many rounds.

What must hold afterwards: the last rollout completed (6 updated and available, every
older ReplicaSet at 0); exactly 6 pods, all of the new template, Running and Ready,
none without a living owner; each ReplicaSet created exactly 6 pods in its life (a
watch that resumes across master restarts saw them all); on every node, one READY
sandbox per pod bound there and nothing else (through CRI on the node's containerd);
every write the master acknowledged is still there with its value; and no failed
request but the excused ones below.

A kill's *window* runs from just before its SIGKILL until the process is back and
healthy (master: serving and leading again; kubelet: /healthz and a renewed node
Lease; proxy: /healthz with a sync since its restart; containerd: CRI ready and the
kubelet's /healthz).

Which failed requests are excused, and why only those (`chaos.excuse`): a request
counts from its connect to its last byte (t0..t1, CLOCK_MONOTONIC in the client and
here). It is excused only when t0..t1 overlapped the window of
- the kube-proxy of the node the client runs on: the kernel keeps that proxy's last
  rules while it is down, so connections may go to pods deleted meanwhile; or
- the containerd of the node of the pod the request was sent to (the DNAT target
  from conntrack's NEW event for that very connection): that node can neither start
  nor stop nor report pods.
Nothing else is excused. Not the master's windows: old pods keep serving for
DRAIN_SECONDS after SIGTERM (a preStop-style drain), longer than a master restart
plus the Lease hand-over, so endpoints always drop a pod before it stops. Not a
kubelet's: its pods keep running without it. Not a request with no DNAT target: a
Service must never be left without endpoints by a rolling update (maxUnavailable 1).

Traffic stays inside the lab's namespaces (no route off the machine). The lab has its
own folder and namespace prefix, and is taken down even on failure.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubeling.client import Client
from kubeling.lab.lab import Lab, running_lab
from tests.support.chaos import KILLED, Chaos, Kill, Report, Request, excuse, lab_options
from tests.support.containerd import skip_reason

pytestmark = [
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
    pytest.mark.slow,
]

SEED = 7
ROUNDS = 2


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    # A short folder: unix socket paths are limited to 108 bytes.
    base = Path(f"/tmp/klchaos-{secrets.token_hex(3)}")
    with running_lab(base, lab_options(f"klc{secrets.token_hex(2)}-")) as running:
        yield running


@pytest.fixture(scope="module")
async def api(lab: Lab) -> AsyncIterator[Client]:
    async with lab.client(timeout=20) as client:
        yield client


@pytest.fixture(scope="module")
async def chaos(lab: Lab, api: Client) -> AsyncIterator[Chaos]:
    runner = Chaos(lab, api, SEED, lab.dir / "chaos")
    runner.work_dir.mkdir()
    try:
        await runner.run(ROUNDS)
        yield runner
    finally:
        await runner.close()


def test_every_component_was_killed_and_came_back(chaos: Chaos) -> None:
    report = chaos.report
    assert report.rounds == ROUNDS
    assert Counter(k.component for k in report.kills) == {c: ROUNDS for c in KILLED}
    assert len({k.pid for k in report.kills}) == len(report.kills)  # a new process each time
    assert all(k.end < float("inf") for k in report.kills)


async def test_the_rollout_completes_with_no_pod_lost_or_duplicated(chaos: Chaos) -> None:
    await chaos.check_pods()


async def test_each_replica_set_created_exactly_its_pods(chaos: Chaos) -> None:
    await chaos.check_pod_history()


async def test_no_sandbox_or_container_is_left_behind(chaos: Chaos) -> None:
    await chaos.check_sandboxes()


async def test_every_acknowledged_write_survives_the_master_kills(chaos: Chaos) -> None:
    assert chaos.report.writes.acked, "the writer got no write acknowledged"
    await chaos.check_writes()


def test_the_service_answers_every_request_but_the_excused(chaos: Chaos) -> None:
    report: Report = chaos.report
    outside = [r for r in report.requests if not report.in_any_window(r)]
    assert outside, "no request ran outside the kill windows"
    assert {r.node for r in report.requests} == {"worker-1", "worker-2", "worker-3"}
    details = [f"{r} during {[k.name for k in report.overlapping(r)]}" for r in report.unexcused]
    assert not report.unexcused, "\n".join([report.table(), *details])


def test_only_the_clients_proxy_and_the_pods_containerd_excuse_a_failure() -> None:
    def node_of_ip(ip: str) -> str:
        return {"10.244.0.5": "worker-1", "10.244.1.5": "worker-2"}.get(ip, "")

    kills = [
        Kill(1, "worker-1", "proxy", start=10, end=12),
        Kill(1, "worker-2", "containerd", start=20, end=22),
        Kill(1, "master", "master", start=30, end=50),
        Kill(1, "worker-2", "kubelet", start=60, end=62),
    ]

    def why(node: str, t0: float, t1: float, dst: str = "") -> str:
        return excuse(Request(node, t0, t1, error="refused", dst=dst), kills, node_of_ip)

    assert why("worker-1", 11, 13) == "proxy of worker-1 down"
    assert why("worker-1", 9, 10.5) == "proxy of worker-1 down"  # overlaps the kill
    assert why("worker-2", 11, 11.5) == ""  # another node's proxy
    assert why("worker-1", 12.5, 13) == ""  # after the proxy was back
    pod_node_down = "containerd of worker-2 (pod 10.244.1.5) down"
    assert why("worker-3", 21, 21.5, dst="10.244.1.5") == pod_node_down
    assert why("worker-3", 21, 21.5, dst="10.244.0.5") == ""  # a pod on another node
    assert why("worker-3", 21, 21.5) == ""  # no pod: never excused
    assert why("worker-1", 40, 41, dst="10.244.0.5") == ""  # the master's window
    assert why("worker-1", 61, 61.5, dst="10.244.1.5") == ""  # the pod's kubelet's window
