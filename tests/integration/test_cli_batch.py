"""Jobs and CronJobs through the `kubeling` console script against a real master
process running the job and cronjob controllers: Kubernetes' own Job and CronJob
manifests apply unchanged (and again, unchanged), `get jobs|cronjobs|cj` show
kubectl's columns, describe, `create job` from an image and from a CronJob.

No kubelet runs: the test sets the Job's pod Succeeded, as a kubelet would report.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kubeling.api import batch
from kubeling.api.objects import clone
from kubeling.client import Client
from tests.integration.test_cli import kubeling, ok, table, write
from tests.support import waiting
from tests.support.processes import MasterProcess, running_master

eventually = functools.partial(waiting.eventually, within=30.0, interval=0.1)

# kubernetes.io's Job example, as published.
PI_JOB = """\
apiVersion: batch/v1
kind: Job
metadata:
  name: pi
spec:
  template:
    spec:
      containers:
      - name: pi
        image: perl:5.34.0
        command: ["perl",  "-Mbignum=bpi", "-wle", "print bpi(2000)"]
      restartPolicy: Never
  backoffLimit: 4
"""

# kubernetes.io's CronJob example, with a time zone.
HELLO_CRON_JOB = """\
apiVersion: batch/v1
kind: CronJob
metadata:
  name: hello
spec:
  schedule: "* * * * *"
  timeZone: "Etc/UTC"
  jobTemplate:
    spec:
      template:
        spec:
          containers:
          - name: hello
            image: busybox:1.28
            imagePullPolicy: IfNotPresent
            command:
            - /bin/sh
            - -c
            - date; echo Hello from the Kubernetes cluster
          restartPolicy: OnFailure
"""


@pytest.fixture(scope="module")
def batch_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MasterProcess]:
    base = tmp_path_factory.mktemp("batch-master")
    with running_master(base, "--bookmark-interval", "1", "--controllers=job") as proc:
        yield proc


async def _succeed_pods_of(address: str, job: str) -> int:
    """Mark the Job's running pods Succeeded; how many there are."""
    async with Client(address, timeout=10) as api:
        pods = (await api.pods.list("default", f"{batch.JOB_NAME_LABEL}={job}")).items
        for pod in pods:
            if pod.status.phase != "Succeeded":
                done = clone(pod)
                done.status.phase = "Succeeded"
                await api.pods.update_status(done)
        return len(pods)


def test_kubernetes_job_manifest_applies_and_completes(
    batch_master: MasterProcess, tmp_path: Path
) -> None:
    manifest = write(tmp_path, "pi.yaml", PI_JOB)
    assert ok(batch_master, "apply", "-f", manifest).strip() == "job.batch/pi created"
    # The server's generated selector and labels survive a second apply.
    assert ok(batch_master, "apply", "-f", manifest).strip() == "job.batch/pi unchanged"
    data = yaml.safe_load(ok(batch_master, "get", "job", "pi", "-o", "yaml"))
    uid = data["metadata"]["uid"]
    assert data["apiVersion"] == "batch/v1"
    assert data["spec"]["selector"]["matchLabels"] == {batch.CONTROLLER_UID_LABEL: uid}
    labels = data["spec"]["template"]["metadata"]["labels"]
    assert labels[batch.JOB_NAME_LABEL] == "pi" and labels["controller-uid"] == uid
    assert (data["spec"]["backoffLimit"], data["spec"]["completions"]) == (4, 1)

    async def pod_made_and_succeeded() -> bool:
        return await _succeed_pods_of(batch_master.address, "pi") == 1

    asyncio.run(eventually(pod_made_and_succeeded))

    def complete() -> bool:
        rows = table(ok(batch_master, "get", "jobs"))
        row = next(r for r in rows if r[0] == "pi")
        return row[1:3] == ["Complete", "1/1"]

    asyncio.run(eventually(complete))
    rows = table(ok(batch_master, "get", "jobs"))
    assert rows[0] == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    described = ok(batch_master, "describe", "job", "pi")
    assert (
        "Pods Statuses:" in described and "0 Active (0 Ready) / 1 Succeeded / 0 Failed" in described
    )
    assert "Backoff Limit:" in described and "Complete" in described
    assert "SuccessfulCreate" in described and "Completed" in described


def test_cron_job_manifest_applies_and_lists(batch_master: MasterProcess, tmp_path: Path) -> None:
    manifest = write(tmp_path, "hello.yaml", HELLO_CRON_JOB)
    assert ok(batch_master, "apply", "-f", manifest).strip() == "cronjob.batch/hello created"
    rows = table(ok(batch_master, "get", "cj"))
    assert rows[0] == ["NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST SCHEDULE", "AGE"]
    row = next(r for r in rows if r[0] == "hello")
    assert row[1:6] == ["* * * * *", "Etc/UTC", "False", "0", "<none>"]
    data = yaml.safe_load(ok(batch_master, "get", "cronjobs", "hello", "-o", "yaml"))
    assert data["spec"]["concurrencyPolicy"] == "Allow"
    assert data["spec"]["successfulJobsHistoryLimit"] == 3
    assert data["spec"]["failedJobsHistoryLimit"] == 1
    described = ok(batch_master, "describe", "cronjob", "hello")
    assert "Schedule:" in described and "Concurrency Policy:" in described
    # A Job by hand from the CronJob's template, owned by it (kubectl's --from).
    out = ok(batch_master, "create", "job", "hello-manual", "--from=cronjob/hello")
    assert out.strip() == "job.batch/hello-manual created"
    job = yaml.safe_load(ok(batch_master, "get", "job", "hello-manual", "-o", "yaml"))
    assert job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
    assert job["spec"]["template"]["spec"]["containers"][0]["name"] == "hello"


def test_create_job_from_an_image(batch_master: MasterProcess) -> None:
    out = ok(
        batch_master, "create", "job", "once", "--image", "busybox", "--",
        "sh", "-c", "echo done",
    )  # fmt: skip
    assert out.strip() == "job.batch/once created"
    job = yaml.safe_load(ok(batch_master, "get", "job", "once", "-o", "yaml"))
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container == {
        "name": "once",
        "image": "busybox",
        "command": ["sh", "-c", "echo done"],
        **{k: v for k, v in container.items() if k not in ("name", "image", "command")},
    }
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    dry = ok(
        batch_master, "create", "job", "x", "--image", "busybox", "--dry-run=client", "-o", "yaml"
    )
    assert yaml.safe_load(dry)["kind"] == "Job"


def test_invalid_job_and_schedule_name_the_field(
    batch_master: MasterProcess, tmp_path: Path
) -> None:
    bad_job = PI_JOB.replace("restartPolicy: Never", "restartPolicy: Always")
    result = kubeling(batch_master, "apply", "-f", write(tmp_path, "bad.yaml", bad_job))
    assert result.returncode == 1
    assert "spec.template.spec.restartPolicy" in result.stderr
    bad_cron = HELLO_CRON_JOB.replace('"* * * * *"', '"every minute"')
    result = kubeling(batch_master, "apply", "-f", write(tmp_path, "badcron.yaml", bad_cron))
    assert result.returncode == 1
    assert "spec.schedule" in result.stderr
