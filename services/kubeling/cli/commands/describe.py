"""`kubeling describe`: one readable page per object, ending with its events."""

from __future__ import annotations

import argparse

import grpc
from google.protobuf.message import Message

from kubeling.api import kinds
from kubeling.api.kinds import Kind
from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.context import Context
from kubeling.cli.describers import Related, describe
from kubeling.cli.errors import CliError
from kubeling.cli.options import add_namespace, add_selector, namespace_for
from kubeling.cli.resources import Target, parse_targets
from kubeling.client import Client


def register(subparsers: SubParsers) -> None:
    parser = add_command(
        subparsers, "describe", run, "Show details of a resource, with its events."
    )
    parser.add_argument("resources", nargs="+", metavar="KIND [NAME ...] | KIND/NAME ...")
    add_namespace(parser, all_namespaces=True)
    add_selector(parser)


async def run(args: argparse.Namespace, ctx: Context) -> int:
    kinds, targets = parse_targets(args.resources)
    failed = False
    async with ctx.client() as api:
        found: list[tuple[Kind, Message]] = []
        for kind in kinds:
            # No names: describe every object of the kind (like kubectl).
            result = await api.resource(kind).list(namespace_for(kind, args), args.selector)
            found += [(kind, obj) for obj in result.items]
        if kinds and not found:
            raise CliError(f"No resources found in {args.namespace or 'default'} namespace.")
        for target in targets:
            obj = await _get(api, target, args, ctx)
            if obj is None:
                failed = True
            else:
                found.append((target.kind, obj))
        for index, (obj_kind, obj) in enumerate(found):
            if index:
                ctx.out("\n")
            related = await related_objects(api, obj_kind, obj)
            ctx.stdout.write(describe(obj_kind, obj, related))
            ctx.stdout.flush()
    return 1 if failed else 0


async def _get(
    api: Client, target: Target, args: argparse.Namespace, ctx: Context
) -> Message | None:
    try:
        client = api.resource(target.kind)
        obj: Message = await client.get(target.name, namespace_for(target.kind, args))
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        ctx.err(f'Error from server (NotFound): {target.kind.plural} "{target.name}" not found')
        return None
    return obj


async def related_objects(api: Client, kind: Kind, obj: Message) -> Related:
    meta = obj.metadata  # type: ignore[attr-defined]
    namespace = meta.namespace
    related = Related()
    # Cluster-scoped objects (nodes) have their events in any namespace.
    selector = f"involvedObject.name={meta.name},involvedObject.kind={kind.name}"
    if kind.namespaced:
        selector += f",involvedObject.namespace={namespace}"
    events = await api.events.list(namespace, field_selector=selector)
    related.events = sorted(
        events.items,
        key=lambda e: (e.last_timestamp.seconds, e.last_timestamp.nanos, e.metadata.name),
    )
    if kind is kinds.NODE:
        pods = await api.pods.list("", field_selector=f"spec.nodeName={meta.name}")
        related.pods = pods.items
    elif kind in (kinds.REPLICA_SET, kinds.DAEMON_SET):
        related.pods = (await api.pods.list(namespace)).items
    elif kind is kinds.DEPLOYMENT:
        related.replica_sets = (await api.replica_sets.list(namespace)).items
    elif kind is kinds.SERVICE:
        slices = await api.endpoint_slices.list(
            namespace, label_selector=f"kubernetes.io/service-name={meta.name}"
        )
        related.endpoint_slices = slices.items
    return related
