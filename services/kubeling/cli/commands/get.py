"""`kubeling get`: tables, YAML/JSON, names, and -w to follow changes."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc
from google.protobuf.message import Message

from kubeling.api.kinds import EVENT, Kind
from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.cli.options import add_namespace, add_selector, namespace_for
from kubeling.cli.printers import OUTPUT_FORMATS, TablePrinter, print_objects, print_watched
from kubeling.cli.resources import Target, parse_targets
from kubeling.client import Client, ResourceClient


def register(subparsers: SubParsers) -> None:
    parser = add_command(subparsers, "get", run, "Display one or many resources.")
    parser.add_argument("resources", nargs="+", metavar="KIND [NAME ...] | KIND/NAME ...")
    add_namespace(parser, all_namespaces=True)
    add_selector(parser)
    parser.add_argument("--field-selector", default="", help="e.g. spec.nodeName=node-1")
    parser.add_argument("-o", "--output", choices=OUTPUT_FORMATS, default=None)
    parser.add_argument("-w", "--watch", action="store_true", help="then print changes")
    parser.add_argument(
        "--watch-only", action="store_true", help="print changes only, not the current state"
    )


async def run(args: argparse.Namespace, ctx: Context) -> int:
    kinds, targets = parse_targets(args.resources)
    if targets and args.selector:
        raise CliError("error: name cannot be provided when a selector is specified")
    if targets and args.all_namespaces:
        raise CliError("error: a resource cannot be retrieved by name across all namespaces")
    watch = args.watch or args.watch_only
    if watch and len(kinds) + len(targets) != 1:
        raise CliError("error: you may only watch a single resource type (and at most one name)")
    async with ctx.client() as api:
        if kinds:
            return await _get_lists(api, kinds, args, ctx, watch)
        return await _get_named(api, targets, args, ctx, watch)


async def _get_lists(
    api: Client, kinds: list[Kind], args: argparse.Namespace, ctx: Context, watch: bool
) -> int:
    wide = args.output == "wide"
    results = []
    for kind in kinds:
        namespace = namespace_for(kind, args)
        result = await api.resource(kind).list(namespace, args.selector, args.field_selector)
        results.append((kind, namespace, result.resource_version, _sorted(kind, result.items)))
    printers = [TablePrinter(kind, wide, args.all_namespaces, ctx.stdout) for kind in kinds]
    if not args.watch_only:
        if args.output in ("json", "yaml", "name"):
            found = [(kind, obj) for kind, _, _, items in results for obj in items]
            print_objects(found, args.output, ctx.stdout, as_list=True)
        elif any(items for *_, items in results):
            shown = 0
            for printer, (_, _, _, items) in zip(printers, results, strict=True):
                if items:
                    if shown:
                        ctx.out("")
                    printer.print(items)
                    shown += 1
        elif not watch:
            namespace = results[0][1]
            where = f" in {namespace} namespace" if namespace else ""
            ctx.err(f"No resources found{where}.")
    if watch:
        kind, namespace, resource_version, _ = results[0]
        client = api.resource(kind)
        await _follow(client, printers[0], args, namespace, args.field_selector, resource_version)
    return 0


async def _get_named(
    api: Client, targets: list[Target], args: argparse.Namespace, ctx: Context, watch: bool
) -> int:
    found: list[tuple[Kind, Message]] = []
    failed = False
    for target in targets:
        namespace = namespace_for(target.kind, args)
        try:
            found.append((target.kind, await api.resource(target.kind).get(target.name, namespace)))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            failed = True
            ctx.err(f'Error from server (NotFound): {target.kind.plural} "{target.name}" not found')
    wide = args.output == "wide"
    printers: dict[str, TablePrinter] = {}
    if args.output in ("json", "yaml", "name"):
        if found:
            print_objects(found, args.output, ctx.stdout, as_list=len(targets) > 1)
    else:
        # One table per kind, in the order the kinds were first asked for.
        by_kind: dict[str, list[Message]] = {}
        for kind, obj in found:
            by_kind.setdefault(kind.name, []).append(obj)
            printers.setdefault(kind.name, TablePrinter(kind, wide, False, ctx.stdout))
        for index, (name, objects) in enumerate(by_kind.items()):
            if index:
                ctx.out("")
            printers[name].print(objects)
    if watch and not failed:
        kind, obj = found[0]
        printer = printers.get(kind.name) or TablePrinter(kind, wide, False, ctx.stdout)
        rv = obj.metadata.resource_version  # type: ignore[attr-defined]
        field = f"metadata.name={targets[0].name}"
        await _follow(api.resource(kind), printer, args, namespace_for(kind, args), field, rv)
    return 1 if failed else 0


def _sorted(kind: Kind, items: list[Any]) -> list[Any]:
    if kind is EVENT:
        # Oldest first, so the newest events end up next to the prompt.
        def when(event: Any) -> tuple[int, int]:
            stamp = event.last_timestamp
            if not (stamp.seconds or stamp.nanos):
                stamp = event.metadata.creation_timestamp
            return (stamp.seconds, stamp.nanos)

        return sorted(items, key=when)
    return items


async def _follow(
    client: ResourceClient[Any],
    printer: TablePrinter,
    args: argparse.Namespace,
    namespace: str,
    field_selector: str,
    resource_version: str,
) -> None:
    """Print every change until interrupted; re-watch when the stream ends."""
    selector = "" if field_selector.startswith("metadata.name=") else args.selector
    header_due = not printer.widths
    while True:
        try:
            async for event in client.watch(namespace, selector, field_selector, resource_version):
                resource_version = event.resource_version or resource_version
                if event.type == "BOOKMARK":
                    continue
                if args.output in ("json", "yaml", "name"):
                    print_watched(printer.kind, event.object, args.output, printer.out)
                else:
                    printer.print([event.object], with_header=header_due)
                    header_due = False
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.OUT_OF_RANGE:
                raise
            resource_version = ""  # history compacted: start again from the current state
        await asyncio.sleep(0.2)  # the stream ended (server restart?): watch again
