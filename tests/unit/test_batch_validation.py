"""Jobs and CronJobs in the API: defaults, validation with Kubernetes' field paths
and phrasing, the server-generated selector, what an update may not change, the
status subresource, and who may do what (authz)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from kubeling.api import batch, kinds
from kubeling.api.errors import ApiError
from kubeling.common import identity
from kubeling.common.identity import Identity
from kubeling.master.authz import Authorizer
from kubeling.master.defaults import apply_defaults
from kubeling.master.server import Master, MasterConfig
from kubeling.master.validation import validate, validate_update
from kubeling.v1 import batch_pb2, meta_pb2

# ------------------------------------------------------------------ helpers

TEMPLATE = {
    "metadata": {"labels": {"app": "pi"}},
    "spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "pi", "image": "perl", "command": ["perl", "-e", "1"]}],
    },
}


def job_data(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "pi", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "pi"}},
            "template": copy.deepcopy(TEMPLATE),
            **spec,
        },
    }


def cron_data(schedule: str = "*/5 * * * *", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "every5", "namespace": "default"},
        "spec": {
            "schedule": schedule,
            "jobTemplate": {"spec": {"template": copy.deepcopy(TEMPLATE)}},
            **spec,
        },
    }


def build(kind: kinds.Kind, data: dict[str, Any]) -> Any:
    obj = json_format.ParseDict(data, kind.message())
    apply_defaults(kind, obj)
    return obj


def problems(kind: kinds.Kind, data: dict[str, Any]) -> dict[str, str]:
    return {v.field: v.description for v in validate(kind, build(kind, data))}


# ------------------------------------------------------------------ defaults


def test_job_defaults_as_kubernetes() -> None:
    job = build(kinds.JOB, job_data())
    spec = job.spec
    assert (spec.parallelism, spec.completions, spec.backoff_limit) == (1, 1, 6)
    assert spec.completion_mode == "NonIndexed"
    assert spec.HasField("suspend") and not spec.suspend
    assert not spec.HasField("manual_selector")
    # The Job takes its template's labels when it has none of its own.
    assert dict(job.metadata.labels) == {"app": "pi"}
    assert problems(kinds.JOB, job_data()) == {}


def test_parallelism_alone_is_the_work_queue_pattern() -> None:
    spec = build(kinds.JOB, job_data(parallelism=3)).spec
    assert spec.parallelism == 3
    assert not spec.HasField("completions")
    spec = build(kinds.JOB, job_data(completions=5)).spec
    assert (spec.parallelism, spec.completions) == (1, 5)


def test_cron_job_defaults() -> None:
    spec = build(kinds.CRON_JOB, cron_data()).spec
    assert spec.concurrency_policy == "Allow"
    assert (spec.successful_jobs_history_limit, spec.failed_jobs_history_limit) == (3, 1)
    assert spec.HasField("suspend") and not spec.suspend
    assert not spec.HasField("time_zone")
    # The template's pods get pod defaults; the Job defaults wait for the Job.
    assert spec.job_template.spec.template.spec.termination_grace_period_seconds == 30
    assert not spec.job_template.spec.HasField("backoff_limit")
    assert problems(kinds.CRON_JOB, cron_data()) == {}


# ---------------------------------------------------------------- validation


def test_job_pods_must_end() -> None:
    data = job_data()
    data["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    assert problems(kinds.JOB, data) == {
        "spec.template.spec.restartPolicy": 'Unsupported value: "Always": supported values: '
        '"OnFailure", "Never"'
    }
    # Unset defaults to Always, which a Job refuses too (as Kubernetes).
    del data["spec"]["template"]["spec"]["restartPolicy"]
    assert "spec.template.spec.restartPolicy" in problems(kinds.JOB, data)
    data["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    assert problems(kinds.JOB, data) == {}


@pytest.mark.parametrize(
    ("field", "path"),
    [
        ("parallelism", "spec.parallelism"),
        ("completions", "spec.completions"),
        ("backoffLimit", "spec.backoffLimit"),
        ("activeDeadlineSeconds", "spec.activeDeadlineSeconds"),
        ("ttlSecondsAfterFinished", "spec.ttlSecondsAfterFinished"),
    ],
)
def test_job_counts_are_not_negative(field: str, path: str) -> None:
    assert problems(kinds.JOB, job_data(**{field: -1})) == {
        path: "Invalid value: -1: must be greater than or equal to 0"
    }


def test_indexed_needs_completions_and_a_known_mode() -> None:
    found = problems(kinds.JOB, job_data(completionMode="Indexed", parallelism=2))
    assert found == {"spec.completions": "Required value: when completion mode is Indexed"}
    assert problems(kinds.JOB, job_data(completionMode="Indexed", completions=3)) == {}
    found = problems(kinds.JOB, job_data(completionMode="Sometimes"))
    assert found["spec.completionMode"].startswith('Unsupported value: "Sometimes"')
    found = problems(kinds.JOB, job_data(completionMode="Indexed", completions=100_001))
    assert "must be less than or equal to 100000" in found["spec.completions"]


def test_selector_must_match_the_template() -> None:
    data = job_data()
    data["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    assert problems(kinds.JOB, data) == {
        "spec.template.metadata.labels": 'Invalid value: {"app": "pi"}: '
        "`selector` does not match template `labels`"
    }
    data = job_data()
    del data["spec"]["selector"]
    assert problems(kinds.JOB, data) == {"spec.selector": "Required value"}


@pytest.mark.parametrize(
    ("schedule", "words"),
    [
        ("", "Required value"),
        ("61 * * * *", "out of range"),
        ("* * * *", "expected exactly 5 fields, found 4"),
        ("0 0 * * * *", "expected exactly 5 fields, found 6"),
        ("CRON_TZ=UTC 0 * * * *", "use timeZone field instead"),
        ("@every 5m", "@every"),
        ("@fortnightly", "unrecognized descriptor"),
        ("hello world", "expected exactly 5 fields"),
    ],
)
def test_bad_schedules_name_spec_schedule(schedule: str, words: str) -> None:
    found = problems(kinds.CRON_JOB, cron_data(schedule))
    assert list(found) == ["spec.schedule"]
    assert words in found["spec.schedule"]


@pytest.mark.parametrize("schedule", ["@hourly", "@daily", "0 9 * * MON-FRI", "*/15 2-4 1 * *"])
def test_good_schedules(schedule: str) -> None:
    assert problems(kinds.CRON_JOB, cron_data(schedule)) == {}


def test_cron_job_fields() -> None:
    found = problems(
        kinds.CRON_JOB,
        cron_data(
            timeZone="Mars/Olympus_Mons",
            concurrencyPolicy="Sometimes",
            startingDeadlineSeconds=-1,
            successfulJobsHistoryLimit=-1,
            failedJobsHistoryLimit=-2,
        ),
    )
    assert (
        found["spec.timeZone"]
        == 'Invalid value: "Mars/Olympus_Mons": unknown time zone Mars/Olympus_Mons'
    )
    assert found["spec.concurrencyPolicy"].startswith('Unsupported value: "Sometimes"')
    for path in (
        "spec.startingDeadlineSeconds",
        "spec.successfulJobsHistoryLimit",
        "spec.failedJobsHistoryLimit",
    ):
        assert "must be greater than or equal to 0" in found[path]
    assert problems(kinds.CRON_JOB, cron_data(timeZone="Europe/Berlin")) == {}
    data = cron_data()
    data["metadata"]["name"] = "n" * 53
    assert "must be no more than 52 characters" in problems(kinds.CRON_JOB, data)["metadata.name"]
    data = cron_data()
    data["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    assert list(problems(kinds.CRON_JOB, data)) == [
        "spec.jobTemplate.spec.template.spec.restartPolicy"
    ]


def test_job_update_may_not_change_what_its_pods_are() -> None:
    old = build(kinds.JOB, job_data(completions=3))
    new = copy.deepcopy(old)
    new.spec.template.spec.containers[0].image = "perl:6"
    new.spec.completions = 4
    new.spec.completion_mode = "Indexed"
    new.spec.selector.match_labels["tier"] = "x"
    found = {v.field for v in validate_update(kinds.JOB, new, old)}
    assert found == {"spec.template", "spec.completions", "spec.completionMode", "spec.selector"}
    mutable = copy.deepcopy(old)
    mutable.spec.parallelism = 5
    mutable.spec.suspend = True
    mutable.spec.backoff_limit = 1
    mutable.spec.active_deadline_seconds = 60
    assert validate_update(kinds.JOB, mutable, old) == []


# ------------------------------------------------------------ through the master


@pytest.fixture
async def master(tmp_path: Path) -> AsyncIterator[Master]:
    master = Master(MasterConfig(listen="127.0.0.1:0", data_dir=tmp_path, tls=False,
                                 controllers=set()))  # fmt: skip
    await master.store.open()
    await master._ensure_namespaces()
    try:
        yield master
    finally:
        await master.store.close()
        await master.supervisor.stop()


def _job_without_selector() -> batch_pb2.Job:
    data = job_data()
    del data["spec"]["selector"]
    return json_format.ParseDict(data, batch_pb2.Job())


async def test_server_generates_the_selector_and_labels(master: Master) -> None:
    registry = master.registries[kinds.JOB.name]
    created = await registry.create(_job_without_selector())
    uid = created.metadata.uid
    assert dict(created.spec.selector.match_labels) == {batch.CONTROLLER_UID_LABEL: uid}
    labels = dict(created.spec.template.metadata.labels)
    assert labels == {
        "app": "pi",
        batch.CONTROLLER_UID_LABEL: uid,
        batch.JOB_NAME_LABEL: "pi",
        "controller-uid": uid,
        "job-name": "pi",
    }
    assert created.metadata.labels[batch.JOB_NAME_LABEL] == "pi"
    # The manifest again (no selector, no generated labels): the server's stay.
    again = _job_without_selector()
    again.spec.parallelism = 3
    updated = await registry.update(again)
    assert updated.spec.selector == created.spec.selector
    assert updated.spec.template == created.spec.template
    assert updated.spec.parallelism == 3
    # A user selector is kept, with the uid added (as Kubernetes).
    other = json_format.ParseDict(job_data(), batch_pb2.Job())
    other.metadata.name = "pi2"
    made = await registry.create(other)
    assert dict(made.spec.selector.match_labels) == {
        "app": "pi",
        batch.CONTROLLER_UID_LABEL: made.metadata.uid,
    }


async def test_manual_selector_is_left_alone(master: Master) -> None:
    registry = master.registries[kinds.JOB.name]
    job = json_format.ParseDict(job_data(manualSelector=True), batch_pb2.Job())
    created = await registry.create(job)
    assert dict(created.spec.selector.match_labels) == {"app": "pi"}
    assert dict(created.spec.template.metadata.labels) == {"app": "pi"}


async def test_status_changes_only_through_update_status(master: Master) -> None:
    registry = master.registries[kinds.JOB.name]
    created = await registry.create(_job_without_selector())
    assert not created.HasField("status")
    change = batch_pb2.Job()
    change.CopyFrom(created)
    change.status.succeeded = 1
    updated = await registry.update(change)
    assert updated.status.succeeded == 0  # Update keeps the stored status
    updated.status.succeeded = 1
    written = await registry.update_status(updated)
    assert written.status.succeeded == 1
    bad = batch_pb2.Job()
    bad.CopyFrom(written)
    bad.status.failed = -1
    with pytest.raises(ApiError) as caught:
        await registry.update_status(bad)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "status.failed" in caught.value.message


# ---------------------------------------------------------------------- authz


def allowed(authz: Authorizer, who: Identity, kind: kinds.Kind, method: str, req: object) -> bool:
    try:
        authz.check_kind(kind, method, who, req)
    except ApiError as refused:
        assert refused.code == grpc.StatusCode.PERMISSION_DENIED
        return False
    return True


async def test_edit_writes_view_reads_nodes_nothing(master: Master) -> None:
    checker = Authorizer(master.registries)
    view = Identity("vi", (identity.GROUP_VIEW,))
    edit = Identity("ed", (identity.GROUP_EDIT,))
    admin = Identity("ad", (identity.GROUP_MASTERS,))
    node = identity.node_identity("w1")
    get = meta_pb2.GetRequest(name="pi", namespace="default")
    for kind, request in (
        (kinds.JOB, batch_pb2.CreateJobRequest(job=batch_pb2.Job())),
        (kinds.CRON_JOB, batch_pb2.CreateCronJobRequest(cron_job=batch_pb2.CronJob())),
    ):
        for method in ("Get", "List", "Watch"):
            assert allowed(checker, view, kind, method, get)
            assert allowed(checker, edit, kind, method, get)
            assert not allowed(checker, node, kind, method, get)
        for method in ("Create", "Update", "Delete"):
            req = get if method == "Delete" else request
            assert allowed(checker, edit, kind, method, req)
            assert allowed(checker, admin, kind, method, req)
            assert not allowed(checker, view, kind, method, req)
            assert not allowed(checker, node, kind, method, req)
