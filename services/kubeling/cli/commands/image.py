"""`kubeling image build|push|list`: build OCI image archives from Debian packages
(kubeling.node.imagebuild, mmdebstrap), put them into a registry over the Registry
HTTP API v2, and list what a registry holds.

`build NAME:TAG --packages a,b` builds one image into the image cache; `build
--provided [NAME ...]` builds the images kubeling provides (busybox,
debian:bookworm-slim, python:3.11-slim, redis:7, postgres:15, kubeling). Both are
cached by their inputs, so a repeat is instant.

`push` takes an archive file, or the name of an image kubeling provides (`redis:7`,
`busybox:1.35.0`, `localhost/kubeling/pause:1.0`), built first when the cache lacks
it. Plain HTTP is spoken only to loopback and the lab network's addresses; any other
registry must serve HTTPS. Registries that need a login are not supported.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.lab.lab import LAB_NETWORK
from kubeling.node.imagebuild import (
    PROVIDED,
    Progress,
    Recipe,
    build_image,
    build_provided,
    check_packages,
    image_cache_dir,
    normalize_name,
    provided_recipe,
)
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
    parser = add_command(
        subparsers, "image", _usage, "Build images from Debian packages; push them to a registry."
    )
    parser.set_defaults(uses_server=False)  # talks to a registry, not the master
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    build = add_command(
        actions,
        "build",
        run_build,
        "Build an OCI image archive from Debian packages with mmdebstrap (cached by its "
        "inputs), or the images kubeling provides (--provided).",
    )
    build.add_argument("name", nargs="*", metavar="NAME:TAG")
    build.add_argument(
        "--provided",
        action="store_true",
        help=f"build the provided images NAME ... (all when none given): {', '.join(PROVIDED)}",
    )
    build.add_argument("--packages", default="", metavar="A,B,...", help="Debian packages")
    build.add_argument(
        "--file", type=Path, metavar="DIR", help="a directory copied onto the image's root"
    )
    build.add_argument("--cmd", help="the image's command (a shell-style string)")
    build.add_argument("--entrypoint", help="the image's entrypoint (a shell-style string)")
    build.add_argument("--env", action="append", default=[], metavar="K=V")
    build.add_argument("--workdir", default="")
    build.add_argument("--user", default="")
    build.add_argument("--port", action="append", default=[], metavar="PORT[/PROTO]")
    build.add_argument(
        "--variant",
        default="essential",
        choices=["essential", "apt", "required", "minbase", "important", "standard"],
        help="mmdebstrap's package set under --packages (default: essential)",
    )
    build.add_argument("--out", type=Path, metavar="ARCHIVE", help="also copy the archive here")
    build.add_argument(
        "--cache",
        type=Path,
        metavar="DIR",
        help="image cache (default: $KUBELING_IMAGE_CACHE or /var/cache/kubeling/images)",
    )
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
    raise CliError(
        "error: give an action: image build NAME:TAG --packages A,B | image build --provided"
        " | image push IMAGE --registry HOST:PORT | image list --registry HOST:PORT"
    )


def _split_command(text: str | None, flag: str) -> tuple[str, ...]:
    import shlex

    if text is None:
        return ()
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise CliError(f"error: {flag} {text!r}: {exc}") from None


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe `image build NAME:TAG --packages ...` describes; CliError when bad."""
    if len(args.name) != 1:
        raise CliError("error: image build takes one NAME:TAG (or --provided [NAME ...])")
    try:
        name = normalize_name(args.name[0])
    except ValueError as exc:
        raise CliError(f"error: {exc}") from None
    packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    if not packages and args.file is None:
        raise CliError("error: image build needs --packages A,B,... (Debian packages)")
    try:
        checked = check_packages(packages)
    except ValueError as exc:
        raise CliError(f"error: --packages: {exc}") from None
    files: Path | None = None
    if args.file is not None:
        if not args.file.is_dir():
            raise CliError(f"error: --file {args.file}: not a directory")
        files = args.file.resolve()
    for env in args.env:
        if "=" not in env or not env.split("=", 1)[0]:
            raise CliError(f"error: --env {env!r}: expected KEY=VALUE")
    ports = []
    for port in args.port:
        number, _, proto = port.partition("/")
        if not number.isdigit() or not 0 < int(number) < 65536 or proto not in ("", "tcp", "udp"):
            raise CliError(f"error: --port {port!r}: expected PORT[/tcp|udp]")
        ports.append(f"{int(number)}/{proto or 'tcp'}")
    return Recipe(
        name=name,
        packages=checked,
        files=files,
        cmd=_split_command(args.cmd, "--cmd"),
        entrypoint=_split_command(args.entrypoint, "--entrypoint"),
        env=tuple(args.env),
        user=args.user,
        workdir=args.workdir,
        exposed_ports=tuple(ports),
        variant=args.variant,
    )


def _summary(path: Path, seconds: float) -> str:
    return f"{path}\t{path.stat().st_size / 1e6:.1f} MB\t{seconds:.1f} s"


async def run_build(args: argparse.Namespace, ctx: Context) -> int:
    cache = args.cache or image_cache_dir()
    progress: Progress = ctx.err  # progress on stderr, results on stdout
    start = time.monotonic()
    try:
        if args.provided:
            if args.packages or args.file or args.out:
                raise CliError(
                    "error: --provided takes image names only (no --packages/--file/--out)"
                )
            for name in args.name or list(PROVIDED):
                begin = time.monotonic()
                built = await asyncio.to_thread(build_provided, [name], cache, progress)
                for key, path in built.items():
                    ctx.out(f"{key}\t{_summary(path, time.monotonic() - begin)}")
            return 0
        recipe = recipe_from_args(args)
        path = await asyncio.to_thread(build_image, recipe, cache, progress)
    except ImageBuildError as exc:
        raise CliError(f"error: {exc}") from None
    except PermissionError as exc:
        raise CliError(f"error: {exc} (run as root, or give --cache DIR)") from None
    if args.out is not None:
        shutil.copyfile(path, args.out)
        path = args.out
    ctx.out(_summary(path, time.monotonic() - start))
    return 0


def _matches(wanted: str, name: str) -> bool:
    want, have = parse_reference(wanted), parse_reference(name)
    explicit_tag = ":" in wanted.rsplit("/", 1)[-1]
    return want.repository == have.repository and (not explicit_tag or want.tag == have.tag)


def _push(image: str, registry: str, progress: Progress) -> list[PushResult]:
    plain = [LAB_NETWORK]
    path = Path(image)
    if path.is_file():
        return push_archive(path, registry, plain_http_networks=plain)
    if path.suffix == ".tar":
        raise RegistryError(f"{image}: no such archive")
    recipe = provided_recipe(image)
    if recipe is not None and recipe.source != "busybox":
        # Built into the image cache unless it is there already.
        archive = build_image(recipe, image_cache_dir(), progress)
        names = [n for n in read_archive_names(archive) if _matches(image, n)]
        return push_archive(archive, registry, plain_http_networks=plain, names=names or None)
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
                f"(localhost/kubeling/pause:1.0, {', '.join(PROVIDED)})"
            )
        return results


async def run_push(args: argparse.Namespace, ctx: Context) -> int:
    try:
        results = await asyncio.to_thread(_push, args.image, args.registry, ctx.err)
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
