"""`kubeling image push|list`: put the node images (OCI archives, as
kubeling.node.images builds them) into a registry over the Registry HTTP API v2, and
list what a registry holds.

`push` takes an archive file, or the name of an image kubeling provides (`busybox`,
`busybox:1.35.0`, `localhost/kubeling/pause:1.0`), which it builds first. Plain HTTP
is spoken only to loopback and the lab network's addresses; any other registry must
serve HTTPS. Registries that need a login are not supported.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.lab.lab import LAB_NETWORK
from kubeling.node.images import ImageBuildError, build_images, read_archive_names
from kubeling.node.registry import (
    PushResult,
    RegistryClient,
    RegistryError,
    parse_reference,
    push_archive,
    registry_base_url,
)


def register(subparsers: SubParsers) -> None:
    parser = add_command(subparsers, "image", _usage, "Push node images to a registry.")
    parser.set_defaults(uses_server=False)  # talks to a registry, not the master
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    push = add_command(
        actions,
        "push",
        run_push,
        "Push an OCI image archive, or an image kubeling builds (busybox, the pause "
        "image), to a registry.",
    )
    push.add_argument("image", metavar="IMAGE-ARCHIVE|NAME")
    push.add_argument("--registry", required=True, metavar="HOST:PORT")
    listing = add_command(actions, "list", run_list, "The repositories and tags of a registry.")
    listing.add_argument("--registry", required=True, metavar="HOST:PORT")


async def _usage(args: argparse.Namespace, ctx: Context) -> int:
    raise CliError("error: give an action: image push IMAGE --registry HOST:PORT | image list")


def _matches(wanted: str, name: str) -> bool:
    want, have = parse_reference(wanted), parse_reference(name)
    explicit_tag = ":" in wanted.rsplit("/", 1)[-1]
    return want.repository == have.repository and (not explicit_tag or want.tag == have.tag)


def _push(image: str, registry: str) -> list[PushResult]:
    plain = [LAB_NETWORK]
    path = Path(image)
    if path.is_file():
        return push_archive(path, registry, plain_http_networks=plain)
    if path.suffix == ".tar":
        raise RegistryError(f"{image}: no such archive")
    with tempfile.TemporaryDirectory(prefix="kubeling-image-") as tmp:
        results: list[PushResult] = []
        for built in build_images(Path(tmp)):
            names = [n for n in read_archive_names(built.path) if _matches(image, n)]
            if names:
                results += push_archive(
                    built.path, registry, plain_http_networks=plain, names=names
                )
        if not results:
            raise RegistryError(
                f"{image}: neither an archive file nor an image kubeling builds "
                "(busybox, localhost/kubeling/pause:1.0)"
            )
        return results


async def run_push(args: argparse.Namespace, ctx: Context) -> int:
    try:
        results = await asyncio.to_thread(_push, args.image, args.registry)
    except (RegistryError, ImageBuildError) as exc:
        raise CliError(f"error: {exc}") from None
    for result in results:
        ctx.out(
            f"pushed {result.reference} {result.digest} "
            f"({result.blobs_uploaded} blobs uploaded, {result.blobs_skipped} already there)"
        )
    return 0


def _list(registry: str) -> list[tuple[str, list[str]]]:
    client = RegistryClient(registry, registry_base_url(registry, [LAB_NETWORK]))
    return [(repo, client.tags(repo)) for repo in sorted(client.catalog())]


async def run_list(args: argparse.Namespace, ctx: Context) -> int:
    try:
        repos = await asyncio.to_thread(_list, args.registry)
    except RegistryError as exc:
        raise CliError(f"error: {exc}") from None
    for repo, tags in repos:
        for tag in tags:
            ctx.out(f"{args.registry}/{repo}:{tag}")
    return 0
