"""`kubeling apply -f`: create what is missing, update what exists.

The manifest is sent as the whole new object with the live resourceVersion; the
server keeps status, system metadata and allocated service IPs and ports.
"""

from __future__ import annotations

import argparse

import grpc

from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError, server_error
from kubeling.cli.manifests import Manifest, load_manifests
from kubeling.cli.options import DEFAULT_NAMESPACE, add_filenames, add_namespace
from kubeling.cli.resources import object_name
from kubeling.client.apply import apply_object


def register(subparsers: SubParsers) -> None:
    parser = add_command(
        subparsers, "apply", run, "Create or update resources from manifest files."
    )
    add_filenames(parser, required=True)
    add_namespace(parser)


async def run(args: argparse.Namespace, ctx: Context) -> int:
    # Everything is parsed (and namespaces checked) before anything is sent.
    manifests = load_manifests(args.filename, ctx.stdin)
    if not manifests:
        raise CliError("error: no objects passed to apply")
    for manifest in manifests:
        set_namespace(manifest, args.namespace)
    failed = False
    async with ctx.client() as api:
        for manifest in manifests:
            client = api.resource(manifest.kind)
            try:
                outcome = await apply_object(client, manifest.obj)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.UNAUTHENTICATED,
                ):
                    raise
                failed = True
                ctx.err(
                    server_error(
                        exc,
                        ctx.server,
                        f'error when applying "{manifest.source}"',
                        source=ctx.target.source,
                    )
                )
                continue
            ctx.out(f"{object_name(manifest.kind, manifest.name)} {outcome}")
    return 1 if failed else 0


def set_namespace(manifest: Manifest, flag: str | None) -> None:
    meta = manifest.obj.metadata  # type: ignore[attr-defined]
    if not manifest.kind.namespaced:
        meta.namespace = ""
        return
    if flag and meta.namespace and meta.namespace != flag:
        raise CliError(
            f'error: {manifest.label}: the namespace from the provided object "{meta.namespace}" '
            f'does not match the namespace "{flag}". You must pass '
            f"'--namespace={meta.namespace}' to perform this operation."
        )
    meta.namespace = meta.namespace or flag or DEFAULT_NAMESPACE
