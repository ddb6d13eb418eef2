"""`kubeling create configmap|secret generic NAME`: objects from literals and files.

As kubectl: `--from-literal KEY=VALUE`, `--from-file [KEY=]PATH` (a directory
adds each regular file in it, named after the file) and `--from-env-file PATH`
(KEY=VALUE lines), all repeatable. A ConfigMap keeps UTF-8 content in `data`
and anything else in `binaryData`; a Secret keeps bytes (base64 in YAML and JSON
output). `--dry-run=client -o yaml` prints the object without sending it.

Secret values given with --from-literal are visible in the process list and the
shell history, as with kubectl; --from-file and --from-env-file keep them out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from google.protobuf.message import Message

from kubeling.api.kinds import CONFIG_MAP, SECRET, Kind
from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.cli.options import add_namespace, namespace_for
from kubeling.cli.printers import print_objects
from kubeling.cli.resources import object_name
from kubeling.v1 import core_pb2


def register(subparsers: SubParsers) -> None:
    parser = add_command(subparsers, "create", _usage, "Create a ConfigMap or a Secret.")
    kinds = parser.add_subparsers(dest="create_kind", metavar="KIND", required=True)
    configmap = kinds.add_parser(
        "configmap",
        aliases=["cm"],
        help="a ConfigMap from literals and files",
        description="Create a ConfigMap from literals and files.",
    )
    _add_source_flags(configmap)
    configmap.set_defaults(run=run_configmap)
    secret = kinds.add_parser("secret", help="a Secret", description="Create a Secret.")
    secret_types = secret.add_subparsers(dest="secret_kind", metavar="TYPE", required=True)
    generic = secret_types.add_parser(
        "generic",
        help="a Secret from literals and files",
        description="Create a Secret from literals and files.",
    )
    _add_source_flags(generic)
    generic.add_argument(
        "--type", default="", help="the Secret's type (default: Opaque)", dest="secret_type"
    )
    generic.set_defaults(run=run_secret)


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument(
        "--from-literal",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a key and its value (repeatable)",
    )
    parser.add_argument(
        "--from-file",
        action="append",
        default=[],
        metavar="[KEY=]PATH",
        help="a file's content under its name or KEY; a directory adds each file in it",
    )
    parser.add_argument(
        "--from-env-file",
        action="append",
        default=[],
        metavar="PATH",
        help="KEY=VALUE lines of a file (# comments and blank lines skipped)",
    )
    parser.add_argument(
        "--immutable", action="store_true", help="refuse any later change of the data"
    )
    parser.add_argument(
        "--dry-run",
        choices=("none", "client"),
        default="none",
        help="client: only print the object (with -o), send nothing",
    )
    parser.add_argument("-o", "--output", choices=("yaml", "json", "name"), default=None)
    add_namespace(parser)
    # main adds these to each command; a nested command's own flags need them too.
    parser.add_argument(
        "--server", "-s", default=argparse.SUPPRESS, metavar="HOST:PORT[,HOST:PORT...]"
    )
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="PATH")


async def _usage(args: argparse.Namespace, ctx: Context) -> int:
    raise CliError("error: create what? kubeling create configmap|secret generic NAME ...")


def collect(args: argparse.Namespace) -> dict[str, bytes]:
    """The keys and values the flags give, in order; a key given twice is an error."""
    found: dict[str, bytes] = {}

    def add(key: str, value: bytes, source: str) -> None:
        if not key:
            raise CliError(f"error: {source}: the key is empty")
        if key in found:
            raise CliError(
                f"error: cannot add key {key!r} from {source}: another key by that name "
                "already exists"
            )
        found[key] = value

    for literal in args.from_literal:
        key, equals, value = literal.partition("=")
        if not equals:
            raise CliError(f"error: --from-literal {key!r}: expected KEY=VALUE")
        add(key, value.encode(), "--from-literal")
    for spec in args.from_file:
        key, equals, path_text = spec.partition("=")
        if not equals:
            key, path_text = "", spec
        path = Path(path_text)
        if path.is_dir():
            if key:
                raise CliError(f"error: --from-file {spec}: a key cannot name a directory")
            for child in sorted(path.iterdir()):
                if child.is_file():
                    add(child.name, _read(child), f"--from-file {child}")
            continue
        add(key or path.name, _read(path), f"--from-file {path}")
    for env_file in args.from_env_file:
        text = _read(Path(env_file)).decode(errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            key, equals, value = stripped.partition("=")
            if not equals:
                raise CliError(f"error: {env_file}:{number}: expected KEY=VALUE")
            add(key.strip(), value.encode(), f"{env_file}:{number}")
    return found


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"error: cannot read {path}: {exc.strerror or exc}") from None


def config_map_of(args: argparse.Namespace) -> core_pb2.ConfigMap:
    cm = core_pb2.ConfigMap(api_version=CONFIG_MAP.api_version, kind=CONFIG_MAP.name)
    cm.metadata.name = args.name
    cm.metadata.namespace = namespace_for(CONFIG_MAP, args)
    for key, value in collect(args).items():
        try:
            cm.data[key] = value.decode()
        except UnicodeDecodeError:
            cm.binary_data[key] = value  # not text: kept as bytes, as kubectl does
    if args.immutable:
        cm.immutable = True
    return cm


def secret_of(args: argparse.Namespace) -> core_pb2.Secret:
    secret = core_pb2.Secret(api_version=SECRET.api_version, kind=SECRET.name)
    secret.metadata.name = args.name
    secret.metadata.namespace = namespace_for(SECRET, args)
    secret.type = args.secret_type or "Opaque"
    for key, value in collect(args).items():
        secret.data[key] = value
    if args.immutable:
        secret.immutable = True
    return secret


async def run_configmap(args: argparse.Namespace, ctx: Context) -> int:
    return await _create(CONFIG_MAP, config_map_of(args), args, ctx)


async def run_secret(args: argparse.Namespace, ctx: Context) -> int:
    return await _create(SECRET, secret_of(args), args, ctx)


async def _create(kind: Kind, obj: Message, args: argparse.Namespace, ctx: Context) -> int:
    created = obj
    if args.dry_run == "none":
        async with ctx.client() as api:
            created = await api.resource(kind).create(obj)
    if args.output is not None:
        print_objects([(kind, created)], args.output, ctx.stdout, as_list=False)
    else:
        suffix = " (dry run)" if args.dry_run == "client" else ""
        ctx.out(f"{object_name(kind, args.name)} created{suffix}")
    return 0
