"""`kubeling rollout status|history|undo deployment/NAME|statefulset/NAME`, as
kubectl's (a StatefulSet's history is its ControllerRevisions)."""

from __future__ import annotations

import argparse
import asyncio
import time

import grpc

from kubeling.api.kinds import DEPLOYMENT, STATEFUL_SET, Kind
from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.cli.options import add_namespace, namespace_for
from kubeling.cli.resources import object_name, parse_targets
from kubeling.client import Client
from kubeling.common import duration as common_duration
from kubeling.controllers import podutil
from kubeling.controllers.deployment import CHANGE_CAUSE, REVISION, revision_of, strip_hash
from kubeling.controllers.statefulset import revision_template
from kubeling.v1 import apps_pb2

_POLL = 0.25


def register(subparsers: SubParsers) -> None:
    parser = add_command(
        subparsers, "rollout", _usage, "Manage the rollout of a deployment or statefulset."
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    status = add_command(actions, "status", run_status, "Wait for a rollout to finish.")
    status.add_argument("resources", nargs="+", metavar="deployment/NAME|statefulset/NAME")
    status.add_argument("--timeout", default="0s", help="give up after this long (0: never)")
    add_namespace(status)
    history = add_command(actions, "history", run_history, "List a workload's revisions.")
    history.add_argument("resources", nargs="+", metavar="deployment/NAME|statefulset/NAME")
    add_namespace(history)
    undo = add_command(actions, "undo", run_undo, "Roll back to a previous revision.")
    undo.add_argument("resources", nargs="+", metavar="deployment/NAME|statefulset/NAME")
    undo.add_argument("--to-revision", type=int, default=0, help="0: the previous revision")
    add_namespace(undo)


async def _usage(args: argparse.Namespace, ctx: Context) -> int:
    raise CliError("error: give an action: rollout status|history|undo deployment/NAME")


def _status_target(args: argparse.Namespace) -> tuple[Kind, str]:
    kinds, targets = parse_targets(args.resources)
    if kinds or len(targets) != 1 or targets[0].kind not in (DEPLOYMENT, STATEFUL_SET):
        raise CliError(
            "error: give one deployment or statefulset: deployment/NAME or statefulset/NAME"
        )
    return targets[0].kind, targets[0].name


def statefulset_message(sts: apps_pb2.StatefulSet) -> tuple[str, bool]:
    """kubectl's status line for a statefulset (its StatefulSetStatusViewer)."""
    spec, status = sts.spec, sts.status
    if spec.update_strategy.type != "RollingUpdate":
        raise CliError("error: rollout status is only available for RollingUpdate strategy type")
    if status.observed_generation == 0 or sts.metadata.generation > status.observed_generation:
        return "Waiting for statefulset spec update to be observed...", False
    if status.ready_replicas < spec.replicas:
        return f"Waiting for {spec.replicas - status.ready_replicas} pods to be ready...", False
    partition = spec.update_strategy.rolling_update.partition
    if partition > 0:
        wanted = spec.replicas - partition
        if status.updated_replicas < wanted:
            return (
                f"Waiting for partitioned roll out to finish: {status.updated_replicas} out "
                f"of {wanted} new pods have been updated...",
                False,
            )
        return (
            f"partitioned roll out complete: {status.updated_replicas} new pods have been "
            "updated...",
            True,
        )
    if status.update_revision != status.current_revision:
        return (
            f"waiting for statefulset rolling update to complete {status.updated_replicas} "
            f"pods at revision {status.update_revision}...",
            False,
        )
    return (
        f"statefulset rolling update complete {status.current_replicas} pods at revision "
        f"{status.current_revision}...",
        True,
    )


def parse_duration(text: str) -> float:
    """kubectl-style durations: "90", "60s", "2m", "1h30m"."""
    try:
        return common_duration.parse_duration(text)
    except ValueError:
        raise CliError(f'error: invalid duration "{text.strip()}"') from None


def rollout_message(deployment: apps_pb2.Deployment) -> tuple[str, bool]:
    """kubectl's status line for a deployment and whether the rollout is done."""
    name, spec, status = deployment.metadata.name, deployment.spec, deployment.status
    if status.observed_generation < deployment.metadata.generation:
        return "Waiting for deployment spec update to be observed...", False
    for condition in status.conditions:
        if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
            raise CliError(f'error: deployment "{name}" exceeded its progress deadline')
    prefix = f'Waiting for deployment "{name}" rollout to finish: '
    if status.updated_replicas < spec.replicas:
        return (
            f"{prefix}{status.updated_replicas} out of {spec.replicas} new replicas "
            "have been updated...",
            False,
        )
    if status.replicas > status.updated_replicas:
        old = status.replicas - status.updated_replicas
        return f"{prefix}{old} old replicas are pending termination...", False
    if status.available_replicas < status.updated_replicas:
        return (
            f"{prefix}{status.available_replicas} of {status.updated_replicas} updated "
            "replicas are available...",
            False,
        )
    return f'deployment "{name}" successfully rolled out', True


async def run_status(args: argparse.Namespace, ctx: Context) -> int:
    kind, name = _status_target(args)
    timeout = parse_duration(args.timeout)
    deadline = time.monotonic() + timeout if timeout > 0 else None
    namespace = namespace_for(kind, args)
    last = ""
    async with ctx.client() as api:
        while True:
            if kind is STATEFUL_SET:
                message, done = statefulset_message(await api.stateful_sets.get(name, namespace))
            else:
                message, done = rollout_message(await api.deployments.get(name, namespace))
            if message != last:
                ctx.out(message)
                last = message
            if done:
                return 0
            if deadline is not None and time.monotonic() > deadline:
                raise CliError("error: timed out waiting for the condition")
            await asyncio.sleep(_POLL)


async def _owned(api: Client, deployment: apps_pb2.Deployment) -> list[apps_pb2.ReplicaSet]:
    namespace = deployment.metadata.namespace
    result = await api.replica_sets.list(namespace)
    owned = [rs for rs in result.items if podutil.is_controlled_by(rs, deployment)]
    return sorted(owned, key=revision_of)


async def _sts_revisions(
    api: Client, sts: apps_pb2.StatefulSet
) -> list[apps_pb2.ControllerRevision]:
    result = await api.controller_revisions.list(sts.metadata.namespace)
    owned = [r for r in result.items if podutil.is_controlled_by(r, sts)]
    return sorted(owned, key=lambda r: r.revision)


async def _sts_history(args: argparse.Namespace, ctx: Context, name: str) -> int:
    async with ctx.client() as api:
        sts = await api.stateful_sets.get(name, namespace_for(STATEFUL_SET, args))
        revisions = await _sts_revisions(api, sts)
    ctx.out(object_name(STATEFUL_SET, name))
    rows = [("REVISION", "CHANGE-CAUSE")]
    rows += [
        (str(r.revision), r.metadata.annotations.get(CHANGE_CAUSE, "<none>")) for r in revisions
    ]
    width = max(len(r[0]) for r in rows) + 2
    for revision, cause in rows:
        ctx.out(f"{revision:<{width}}{cause}")
    return 0


async def _sts_undo(args: argparse.Namespace, ctx: Context, name: str) -> int:
    namespace = namespace_for(STATEFUL_SET, args)
    async with ctx.client() as api:
        for attempt in range(5):
            sts = await api.stateful_sets.get(name, namespace)
            revisions = await _sts_revisions(api, sts)
            if args.to_revision > 0:
                chosen = [r for r in revisions if r.revision == args.to_revision]
                if not chosen:
                    raise CliError(
                        f"error: unable to find specified revision {args.to_revision} in history"
                    )
                target = chosen[0]
            elif len(revisions) < 2:
                raise CliError("error: no rollout history found for the previous revision")
            else:
                target = revisions[-2]
            template = revision_template(target)
            if template == sts.spec.template:
                ctx.out(
                    f"{object_name(STATEFUL_SET, name)} skipped rollback (current template "
                    f"already matches revision {target.revision})"
                )
                return 0
            sts.spec.template.CopyFrom(template)
            try:
                await api.stateful_sets.update(sts)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED or attempt == 4:
                    raise
    ctx.out(f"{object_name(STATEFUL_SET, name)} rolled back")
    return 0


async def run_history(args: argparse.Namespace, ctx: Context) -> int:
    kind, name = _status_target(args)
    if kind is STATEFUL_SET:
        return await _sts_history(args, ctx, name)
    async with ctx.client() as api:
        deployment = await api.deployments.get(name, namespace_for(DEPLOYMENT, args))
        owned = await _owned(api, deployment)
    ctx.out(object_name(DEPLOYMENT, name))
    rows = [("REVISION", "CHANGE-CAUSE")]
    rows += [
        (str(revision_of(rs)), rs.metadata.annotations.get(CHANGE_CAUSE, "<none>"))
        for rs in owned
        if revision_of(rs) > 0
    ]
    width = max(len(r[0]) for r in rows) + 2
    for revision, cause in rows:
        ctx.out(f"{revision:<{width}}{cause}")
    return 0


async def run_undo(args: argparse.Namespace, ctx: Context) -> int:
    kind, name = _status_target(args)
    if kind is STATEFUL_SET:
        return await _sts_undo(args, ctx, name)
    namespace = namespace_for(DEPLOYMENT, args)
    async with ctx.client() as api:
        for attempt in range(5):
            deployment = await api.deployments.get(name, namespace)
            owned = await _owned(api, deployment)
            target = _target(owned, args.to_revision)
            template = strip_hash(target.spec.template)
            if template == deployment.spec.template:
                ctx.out(
                    f"{object_name(DEPLOYMENT, name)} skipped rollback (current template "
                    f"already matches revision {revision_of(target)})"
                )
                return 0
            # As kubectl: the old template, and the change-cause that came with it.
            deployment.spec.template.CopyFrom(template)
            cause = target.metadata.annotations.get(CHANGE_CAUSE)
            if cause is None:
                deployment.metadata.annotations.pop(CHANGE_CAUSE, None)
            else:
                deployment.metadata.annotations[CHANGE_CAUSE] = cause
            try:
                await api.deployments.update(deployment)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED or attempt == 4:
                    raise
    ctx.out(f"{object_name(DEPLOYMENT, name)} rolled back")
    return 0


def _target(owned: list[apps_pb2.ReplicaSet], to_revision: int) -> apps_pb2.ReplicaSet:
    with_revision = [rs for rs in owned if rs.metadata.annotations.get(REVISION)]
    if to_revision > 0:
        for rs in with_revision:
            if revision_of(rs) == to_revision:
                return rs
        raise CliError(f"error: unable to find specified revision {to_revision} in history")
    if len(with_revision) < 2:
        raise CliError("error: no rollout history found for the previous revision")
    return with_revision[-2]  # sorted by revision: the one before the current
