"""A real `kubeling-master` process: its Prometheus series on --metrics-bind-address
carry real values after real API calls, and a loop that keeps crashing makes the
process exit non-zero (so systemd restarts it)."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubeling.client import Client
from tests.integration.test_scheduler import make_node, make_pod
from tests.integration.test_workloads import replica_set
from tests.support.processes import free_port, running_master, stop_process
from tests.support.waiting import eventually

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, series: str, /, **labels: str) -> float:
    """The sum of `series` over the samples carrying at least `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == series and wanted <= ls)


@pytest.mark.asyncio(loop_scope="session")
async def test_master_metrics_show_real_values(tmp_path: Path) -> None:
    port = free_port()
    with running_master(tmp_path, "--metrics-bind-address", f"127.0.0.1:{port}") as master:
        async with Client(master.address) as api:
            await api.nodes.create(make_node("node-1"))
            for i in range(5):
                await api.pods.create(make_pod(f"p-{i}"))
            await api.pods.get("p-0", "default")
            await api.pods.list("default")
            with pytest.raises(grpc.aio.AioRpcError):
                await api.pods.get("missing", "default")
            await api.replica_sets.create(replica_set("web", 3))
            watch = api.pods.watch("default")
            first = await anext(aiter(watch))  # the watch is open on the server now
            assert first.type in ("ADDED", "BOOKMARK")

            async def everything_bound() -> bool:
                pods = (await api.pods.list("default")).items
                return len(pods) == 8 and all(p.spec.node_name == "node-1" for p in pods)

            await eventually(everything_bound, within=20)
            status, text = scrape(port)
            assert status == 200
            found = samples(text)
            await watch.aclose()  # type: ignore[attr-defined]

        pods = {"resource": "pods", "subresource": ""}
        assert value(found, "apiserver_request_total", verb="create", code="OK", **pods) >= 5
        assert value(found, "apiserver_request_total", verb="get", code="NOT_FOUND", **pods) >= 1
        assert value(found, "apiserver_request_total", verb="list", code="OK", **pods) >= 1
        assert value(found, "apiserver_request_duration_seconds_count", verb="create", **pods) >= 5
        # Bindings made by the scheduler, and the status updates of controllers.
        binds = {"resource": "pods", "subresource": "binding", "verb": "create"}
        assert value(found, "apiserver_request_total", code="OK", **binds) >= 8
        # Our watch and the controllers' informers are open.
        assert value(found, "apiserver_longrunning_requests", verb="watch", **pods) >= 2
        # Every write went through a group commit.
        assert value(found, "kubeling_storage_commit_duration_seconds_count") >= 9
        assert value(found, "kubeling_storage_commit_group_size_sum") >= 9
        # The controllers' work queues and the scheduler.
        assert value(found, "workqueue_adds_total", name="replicaset") >= 1
        assert value(found, "workqueue_work_duration_seconds_count", name="replicaset") >= 1
        assert value(found, "workqueue_queue_duration_seconds_count", name="scheduler") >= 8
        assert ("workqueue_depth", frozenset({("name", "scheduler")})) in found
        assert value(found, "scheduler_schedule_attempts_total", result="scheduled") >= 8
        assert value(found, "scheduler_scheduling_attempt_duration_seconds_count") >= 8
        lease = frozenset({("name", "kubeling-controller-manager")})
        assert found[("leader_election_master_status", lease)] == 1.0
        assert scrape(port, "/healthz") == (200, "ok")
        assert scrape(port, "/livez") == (200, "ok")


# A real master whose namespace controller always fails: the supervisor restarts it
# with back-off, then gives up, and the process exits 1.
_BROKEN_MASTER = """
import sys
from kubeling.master import namespace_controller

async def broken(self):
    raise RuntimeError("namespace controller broken (injected by the test)")

namespace_controller.NamespaceController.run = broken
from kubeling.master.main import main
main(sys.argv[1:])
"""


def test_a_master_whose_loop_keeps_crashing_exits_non_zero(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "master.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-c", _BROKEN_MASTER,
                "--listen", f"127.0.0.1:{port}",
                "--data-dir", str(tmp_path / "data"),
                "--insecure",
                "--metrics-bind-address", "127.0.0.1:0",
                "--controllers", "",
                "--loop-crash-limit", "3",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        code = process.wait(timeout=30)
    finally:
        stop_process(process)
    output = log_path.read_text(errors="replace")
    assert code == 1, output
    assert "namespace controller broken" in output
    assert "giving up" in output
