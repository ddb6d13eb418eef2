"""Jobs, CronJobs and StatefulSets on a real 2-worker lab (network namespaces,
containerd, real kubelets, the cluster DNS add-on as the lab runs it by default),
every container the busybox image pulled from the lab's registry:

- a Job with parallelism 2 and completions 4 completes, never more than 2 of its
  pods running at once (as observed while it ran, and from the containers' own
  start and finish times);
- a Job whose container always exits 1 stops at its backoffLimit, Failed with
  reason BackoffLimitExceeded, having made backoffLimit + 1 pods and no more;
- a CronJob on `* * * * *` fires at the next minute: a Job owned by it whose pod
  runs and completes, and lastScheduleTime set; a suspended one beside it fires
  nothing at the same minute, and once suspended the first lets the next minute
  pass without a Job;
- a StatefulSet's pods start in order (NAME-1 made only once NAME-0 is Running
  and Ready), and each resolves as NAME-i.SERVICE.NS.svc.cluster.local from
  another pod, through the headless Service, to that pod's IP.

One lab for the module; each test has its own namespace."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from kubeling.api import batch
from kubeling.client import Client
from kubeling.lab.lab import Lab, LabOptions, running_lab
from kubeling.v1 import apps_pb2, batch_pb2, core_pb2
from tests.support import waiting
from tests.support.containerd import skip_reason
from tests.support.lab_pods import client_pod, create_once, nslookup, parse, ready

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))

# Generous: the machine has 2 cores, often shared with another lab.
eventually = functools.partial(
    waiting.eventually, within=180.0, interval=0.5, retry_on=waiting.TRANSIENT_ERRORS
)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    # A short folder: unix socket paths are limited to 108 bytes.
    base = Path(f"/tmp/klbs-{secrets.token_hex(3)}")
    options = LabOptions(nodes=2, prefix=f"klbs{secrets.token_hex(2)}-")
    with running_lab(base, options) as running:
        yield running


@pytest.fixture
async def api(lab: Lab) -> AsyncIterator[Client]:
    async with lab.client(timeout=20) as client:
        yield client


async def namespace(api: Client, name: str) -> str:
    await create_once(api.namespaces, parse(f"metadata: {{name: {name}}}", core_pb2.Namespace()))
    return name


def stamp(value: Any) -> dt.datetime:
    when: dt.datetime = value.ToDatetime(tzinfo=dt.UTC)
    return when


async def snapshot(api: Client, ns: str) -> str:
    """Jobs, pods and recent events of `ns`, for a failure message."""
    lines = ["", "jobs:"]
    for j in (await api.jobs.list(ns)).items:
        conditions = [(c.type, c.status, c.reason) for c in j.status.conditions]
        lines.append(
            f"  {j.metadata.name} active={j.status.active} succeeded={j.status.succeeded} "
            f"failed={j.status.failed} {conditions}"
        )
    lines.append("pods:")
    for pod in (await api.pods.list(ns)).items:
        lines.append(
            f"  {pod.metadata.name} node={pod.spec.node_name} phase={pod.status.phase} "
            f"ip={pod.status.pod_ip} ready={ready(pod)}"
        )
    lines.append("events:")
    for event in (await api.events.list(ns)).items[-30:]:
        lines.append(f"  {event.involved_object.name}: {event.reason} {event.message}")
    return "\n".join(lines)


def job_template(script: str, **spec: Any) -> dict[str, Any]:
    return {
        **spec,
        "template": {
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "main",
                        "image": "busybox",
                        "command": ["sh", "-c", script],
                        "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}},
                    }
                ],
            }
        },
    }


def job(name: str, ns: str, script: str, **spec: Any) -> batch_pb2.Job:
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ns},
        "spec": job_template(script, **spec),
    }
    return json_format.ParseDict(body, batch_pb2.Job())


async def pods_of(api: Client, ns: str, job_name: str) -> list[core_pb2.Pod]:
    return list((await api.pods.list(ns, f"{batch.JOB_NAME_LABEL}={job_name}")).items)


def condition(j: batch_pb2.Job, type_: str) -> Any:
    return next((c for c in j.status.conditions if c.type == type_), None)


async def test_a_parallel_job_completes_two_pods_at_a_time(api: Client) -> None:
    ns = await namespace(api, "batch-par")
    await api.jobs.create(job("work", ns, "sleep 4", parallelism=2, completions=4))
    most_running, most_active = 0, 0

    async def complete() -> bool:
        nonlocal most_running, most_active
        running = [p for p in await pods_of(api, ns, "work") if p.status.phase == "Running"]
        most_running = max(most_running, len(running))
        j = await api.jobs.get("work", ns)
        most_active = max(most_active, j.status.active)
        return batch.finished_type(j) == batch.COMPLETE

    await eventually(complete, describe=lambda: snapshot(api, ns))
    done = await api.jobs.get("work", ns)
    assert (done.status.succeeded, done.status.failed, done.status.active) == (4, 0, 0)
    complete_condition = condition(done, batch.COMPLETE)
    assert complete_condition is not None and complete_condition.status == "True"
    # Seen while it ran: 2 at a time (it did run in parallel), never more.
    assert most_running <= 2 and most_active == 2, (most_running, most_active)
    pods = await pods_of(api, ns, "work")
    assert len(pods) == 4 and all(p.status.phase == "Succeeded" for p in pods)
    # The containers' own run times: at no instant more than 2 were running.
    spans = []
    for pod in pods:
        (status,) = pod.status.container_statuses
        ended = status.state.terminated
        assert ended.exit_code == 0
        spans.append((stamp(ended.started_at), stamp(ended.finished_at)))
    for start, _ in spans:
        overlapping = sum(1 for s, f in spans if s <= start < f)
        assert overlapping <= 2, spans


async def test_a_failing_job_stops_at_its_backoff_limit(api: Client) -> None:
    ns = await namespace(api, "batch-fail")
    await api.jobs.create(job("broken", ns, "exit 1", backoffLimit=1))

    async def failed() -> bool:
        return batch.finished_type(await api.jobs.get("broken", ns)) == batch.FAILED

    # (The second pod waits out a back-off of about 10 s after the first failure.)
    await eventually(failed, describe=lambda: snapshot(api, ns))
    j = await api.jobs.get("broken", ns)
    failed_condition = condition(j, batch.FAILED)
    assert failed_condition is not None and failed_condition.status == "True"
    assert failed_condition.reason == "BackoffLimitExceeded"
    assert j.status.failed == 2 and j.status.succeeded == 0
    pods = await pods_of(api, ns, "broken")
    assert len(pods) == 2, await snapshot(api, ns)
    assert all(p.status.phase == "Failed" for p in pods)
    assert {p.status.container_statuses[0].state.terminated.exit_code for p in pods} == {1}
    # And none after: a failed Job makes no more pods (a back-off's worth later).
    await asyncio.sleep(12)
    assert len(await pods_of(api, ns, "broken")) == 2
    assert (await api.jobs.get("broken", ns)).status.active == 0


def cron_job(name: str, ns: str, *, suspend: bool) -> batch_pb2.CronJob:
    body = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "schedule": "* * * * *",
            "suspend": suspend,
            "jobTemplate": {"spec": job_template("echo tick")},
        },
    }
    return json_format.ParseDict(body, batch_pb2.CronJob())


async def test_a_cron_job_fires_on_schedule_and_a_suspended_one_does_not(api: Client) -> None:
    ns = await namespace(api, "batch-cron")
    tick = await api.cron_jobs.create(cron_job("tick", ns, suspend=False))
    await api.cron_jobs.create(cron_job("paused", ns, suspend=True))

    def owner(j: batch_pb2.Job) -> str:
        refs = [r for r in j.metadata.owner_references if r.controller]
        return f"{refs[0].kind}/{refs[0].name}/{refs[0].uid}" if refs else ""

    async def fired() -> batch_pb2.Job | None:
        jobs = (await api.jobs.list(ns)).items
        return next((j for j in jobs if owner(j) == f"CronJob/tick/{tick.metadata.uid}"), None)

    # The next minute's boundary, then its Job made and run.
    first = await eventually(fired, within=130, describe=lambda: snapshot(api, ns))
    name = first.metadata.name

    async def complete() -> bool:
        return batch.finished_type(await api.jobs.get(name, ns)) == batch.COMPLETE

    await eventually(complete, within=120, describe=lambda: snapshot(api, ns))
    pods = await pods_of(api, ns, name)
    assert len(pods) == 1 and pods[0].status.phase == "Succeeded"
    status = (await api.cron_jobs.get("tick", ns)).status
    assert status.HasField("last_schedule_time")
    scheduled = stamp(status.last_schedule_time)
    assert scheduled.second == 0 and scheduled >= stamp(tick.metadata.creation_timestamp)
    assert scheduled - stamp(tick.metadata.creation_timestamp) <= dt.timedelta(minutes=1)
    # The suspended one, on the same schedule, made nothing at that minute.
    jobs = (await api.jobs.list(ns)).items
    assert all(owner(j).startswith("CronJob/tick/") for j in jobs), [owner(j) for j in jobs]
    assert not (await api.cron_jobs.get("paused", ns)).status.HasField("last_schedule_time")

    # Suspended now, it lets the next minute pass without a Job.
    async def suspend() -> bool:
        current = await api.cron_jobs.get("tick", ns)
        current.spec.suspend = True
        await api.cron_jobs.update(current)  # (a conflict with a status write: again)
        return True

    await eventually(suspend, within=30)
    next_minute = scheduled + dt.timedelta(minutes=1)
    wait = (next_minute - dt.datetime.now(dt.UTC)).total_seconds() + 15
    await asyncio.sleep(max(wait, 0))
    names = [j.metadata.name for j in (await api.jobs.list(ns)).items]
    assert names == [name], await snapshot(api, ns)
    status = (await api.cron_jobs.get("tick", ns)).status
    assert stamp(status.last_schedule_time) == scheduled


STATEFUL = """
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 2
  serviceName: web
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: busybox
          command: ["sh", "-c"]
          # Ready a few seconds after it starts: time for a too-early NAME-1 to show.
          args:
            - sleep 3 && mkdir -p /www && hostname > /www/index.html && httpd -f -p 8080 -h /www
          ports: [{{name: http, containerPort: 8080}}]
          readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 1}}
          resources: {{requests: {{cpu: 10m, memory: 8Mi}}}}
"""

HEADLESS = """
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
"""


async def test_stateful_pods_start_in_order_and_resolve_by_name(api: Client) -> None:
    ns = await namespace(api, "stateful")
    await api.pods.create(client_pod(ns))
    await api.services.create(parse(HEADLESS.format(ns=ns), core_pb2.Service()))
    await api.stateful_sets.create(parse(STATEFUL.format(ns=ns), apps_pb2.StatefulSet()))
    # What each poll saw: whether web-1 existed and whether web-0 was ready then.
    early: list[str] = []

    async def both_ready() -> bool:
        found = {p.metadata.name: p for p in (await api.pods.list(ns, "app=web")).items}
        if "web-1" in found and not ("web-0" in found and ready(found["web-0"])):
            web0 = found.get("web-0")
            seen = f"{web0.status.phase}, ready={ready(web0)}" if web0 else "not there"
            early.append(f"web-1 made while web-0 was {seen}")
        client = await api.pods.get("client", ns)
        return len(found) == 2 and all(ready(p) for p in [*found.values(), client])

    await eventually(both_ready, interval=0.2, describe=lambda: snapshot(api, ns))
    assert early == [], early[:3]
    pod0, pod1 = [await api.pods.get(f"web-{i}", ns) for i in range(2)]
    ready0 = condition_of(pod0, "Ready")
    assert stamp(pod1.metadata.creation_timestamp) >= stamp(ready0.last_transition_time), (
        pod1.metadata.creation_timestamp,
        ready0,
    )
    # Each by its stable name, from the client pod, through the headless Service.
    for pod in (pod0, pod1):
        fqdn = f"{pod.metadata.name}.web.{ns}.svc.cluster.local"

        async def resolved(fqdn: str = fqdn, ip: str = pod.status.pod_ip) -> bool:
            found = await nslookup(api, ns, fqdn)
            assert found == {ip}, (fqdn, found, ip)
            return True

        await eventually(resolved, within=60, describe=lambda: snapshot(api, ns))


def condition_of(pod: core_pb2.Pod, type_: str) -> Any:
    found = next(c for c in pod.status.conditions if c.type == type_)
    assert found.status == "True"
    return found
