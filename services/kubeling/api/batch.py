"""The batch API's vocabulary, shared by the master (selector generation), the Job
and CronJob controllers and the CLI: Kubernetes' label, annotation and finalizer
names, condition types, and the completed-indexes notation ("0-2,5")."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Labels the server puts on a Job's template (and selects on) unless the Job's
# selector is manual; the unprefixed ones are Kubernetes' legacy names, kept
# because existing tools select on them.
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
LEGACY_CONTROLLER_UID_LABEL = "controller-uid"
LEGACY_JOB_NAME_LABEL = "job-name"
GENERATED_LABELS = (
    CONTROLLER_UID_LABEL,
    JOB_NAME_LABEL,
    LEGACY_CONTROLLER_UID_LABEL,
    LEGACY_JOB_NAME_LABEL,
)

# An Indexed Job's pod carries its index as label and annotation, and in env.
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"
# Holds a Job's pod until its outcome is counted in the Job's status.
TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
# On a CronJob's Job: the time it was scheduled for (RFC 3339).
CRONJOB_SCHEDULED_TIMESTAMP = "batch.kubernetes.io/cronjob-scheduled-timestamp"

# Job condition types.
COMPLETE = "Complete"
FAILED = "Failed"
SUSPENDED = "Suspended"
FAILURE_TARGET = "FailureTarget"
SUCCESS_CRITERIA_MET = "SuccessCriteriaMet"


def condition(status: Any, type_: str) -> Any:
    """The condition of `type_` whose status is True, or None."""
    for c in status.conditions:
        if c.type == type_ and c.status == "True":
            return c
    return None


def finished_type(job: Any) -> str:
    """ "Complete" or "Failed" when the Job has finished, "" while it runs."""
    for c in job.status.conditions:
        if c.type in (COMPLETE, FAILED) and c.status == "True":
            return str(c.type)
    return ""


def parse_indexes(text: str) -> set[int]:
    """ "0-2,5" -> {0, 1, 2, 5}; malformed parts are skipped."""
    found: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            if dash:
                found.update(range(int(first), int(last) + 1))
            else:
                found.add(int(first))
        except ValueError:
            continue
    return found


def format_indexes(indexes: Iterable[int]) -> str:
    """{0, 1, 2, 5} -> "0-2,5" (Kubernetes' completedIndexes form)."""
    ordered = sorted(set(indexes))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)
