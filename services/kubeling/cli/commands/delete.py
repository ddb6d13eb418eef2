"""`kubeling delete`: by kind and names, by label selector, or from manifests."""

from __future__ import annotations

import argparse

import grpc

from kubeling.api.kinds import NAMESPACE
from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.cli.manifests import load_manifests
from kubeling.cli.options import (
    DEFAULT_NAMESPACE,
    add_filenames,
    add_namespace,
    add_selector,
    namespace_for,
)
from kubeling.cli.resources import Target, parse_targets, resource_name
from kubeling.client import Client

_CASCADE = {"background": "Background", "foreground": "Foreground", "orphan": "Orphan"}


def register(subparsers: SubParsers) -> None:
    parser = add_command(subparsers, "delete", run, "Delete resources.")
    parser.add_argument("resources", nargs="*", metavar="KIND [NAME ...] | KIND/NAME ...")
    add_filenames(parser, required=False)
    add_namespace(parser)
    add_selector(parser)
    parser.add_argument("--all", action="store_true", help="every object of the kind")
    parser.add_argument(
        "--grace-period",
        type=int,
        default=-1,
        help="seconds to let pods stop (-1: the object's own setting; 0: immediately)",
    )
    parser.add_argument(
        "--cascade",
        choices=tuple(_CASCADE),
        default="background",
        help="how dependents (e.g. a deployment's replica sets) are deleted",
    )
    parser.add_argument(
        "--ignore-not-found", action="store_true", help="succeed when the object is absent"
    )


async def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.filename and args.resources:
        raise CliError("error: give either -f FILE or KIND NAME, not both")
    async with ctx.client() as api:
        if args.filename:
            manifests = load_manifests(args.filename, ctx.stdin)
            # Namespaces last: deleting one first would take its objects with it and
            # turn their own deletions into confusing "not found" errors.
            manifests.sort(key=lambda m: m.kind is NAMESPACE)
            items = [
                (Target(m.kind, m.name), _manifest_namespace(m.namespace, m.kind.namespaced, args))
                for m in manifests
            ]
        else:
            items = await _targets(api, args)
        failed = False
        for target, namespace in items:
            failed |= not await _delete(api, target, namespace, args, ctx)
    return 1 if failed else 0


def _manifest_namespace(namespace: str, namespaced: bool, args: argparse.Namespace) -> str:
    if not namespaced:
        return ""
    return namespace or args.namespace or DEFAULT_NAMESPACE


async def _targets(api: Client, args: argparse.Namespace) -> list[tuple[Target, str]]:
    kinds, targets = parse_targets(args.resources)
    if kinds:
        if not (args.selector or args.all):
            raise CliError(
                "error: resource(s) were provided, but no name was specified; "
                "give names, -l SELECTOR or --all"
            )
        found = []
        for kind in kinds:
            result = await api.resource(kind).list(namespace_for(kind, args), args.selector)
            found += [(Target(kind, o.metadata.name), o.metadata.namespace) for o in result.items]
        return found
    if args.selector or args.all:
        raise CliError("error: name cannot be provided when a selector or --all is specified")
    return [(t, namespace_for(t.kind, args)) for t in targets]


async def _delete(
    api: Client, target: Target, namespace: str, args: argparse.Namespace, ctx: Context
) -> bool:
    grace = args.grace_period if args.grace_period >= 0 else None
    try:
        await api.resource(target.kind).delete(
            target.name,
            namespace,
            grace_period_seconds=grace,
            propagation_policy=_CASCADE[args.cascade],
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        if args.ignore_not_found:
            return True
        ctx.err(f'Error from server (NotFound): {target.kind.plural} "{target.name}" not found')
        return False
    ctx.out(f'{resource_name(target.kind)} "{target.name}" deleted')
    return True
