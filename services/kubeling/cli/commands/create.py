"""`kubeling create configmap|secret generic NAME`: objects from literals and files;
`kubeling create job NAME --image IMAGE [-- COMMAND ARGS...]` or `--from=cronjob/NAME`.

As kubectl: `--from-literal KEY=VALUE`, `--from-file [KEY=]PATH` (a directory
adds each regular file in it, named after the file) and `--from-env-file PATH`
(KEY=VALUE lines), all repeatable. A ConfigMap keeps UTF-8 content in `data`
and anything else in `binaryData`; a Secret keeps bytes (base64 in YAML and JSON
output). `--dry-run=client -o yaml` prints the object without sending it.

Secret values given with --from-literal are visible in the process list and the
shell history, as with kubectl; --from-file and --from-env-file keep them out.

A Job made from a CronJob (as kubectl) is the CronJob's jobTemplate, annotated
`cronjob.kubernetes.io/instantiate: manual` and owned by the CronJob; a Job made
from an image runs one container named after the Job, restartPolicy Never.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from google.protobuf.message import Message

from kubeling.api.kinds import CONFIG_MAP, CRON_JOB, JOB, SECRET, Kind
from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.cli.options import add_namespace, namespace_for
from kubeling.cli.printers import print_objects
from kubeling.cli.resources import object_name, resolve_kind
from kubeling.v1 import batch_pb2, core_pb2, meta_pb2


def register(subparsers: SubParsers) -> None:
    parser = add_command(subparsers, "create", _usage, "Create a ConfigMap, a Secret or a Job.")
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
    job = kinds.add_parser(
        "job",
        help="a Job running an image, or made from a CronJob",
        description="Create a Job: `job NAME --image IMAGE [-- COMMAND ARGS...]` or "
        "`job NAME --from=cronjob/NAME`.",
    )
    _add_job_flags(job)
    job.add_argument("name", metavar="NAME")
    # Options may follow NAME and the command follows "--": run_job reads these
    # words itself (argparse would take the command's own options as ours).
    job.add_argument(
        "job_words", nargs=argparse.REMAINDER, metavar="[--image IMAGE] [-- COMMAND ARGS...]"
    )
    job.set_defaults(run=run_job)


def _add_job_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", default="", help="the image of the Job's one container")
    parser.add_argument(
        "--from", dest="from_object", default="", metavar="cronjob/NAME",
        help="make the Job from this CronJob's jobTemplate",
    )  # fmt: skip
    _add_output_flags(parser)


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
    _add_output_flags(parser)


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
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
    raise CliError("error: create what? kubeling create configmap|secret generic|job NAME ...")


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


def parse_job_words(args: argparse.Namespace) -> list[str]:
    """Read the options after NAME into `args`; return the command after "--"."""
    words = list(args.job_words)
    split = words.index("--") if "--" in words else len(words)
    before, command = words[:split], words[split + 1 :]
    options = argparse.ArgumentParser(prog="kubeling create job", add_help=False)
    _add_job_flags(options)
    # Defaults do not overwrite what the first parse found (argparse sets a default
    # only for an attribute the namespace lacks).
    options.parse_args(before, namespace=args)
    return command


def job_of(args: argparse.Namespace, command: list[str]) -> batch_pb2.Job:
    """The Job `create job` sends when given an image."""
    if not args.image:
        raise CliError("error: --image or --from is required")
    job = batch_pb2.Job(api_version=JOB.api_version, kind=JOB.name)
    job.metadata.name = args.name
    job.metadata.namespace = namespace_for(JOB, args)
    pod = job.spec.template.spec
    pod.restart_policy = "Never"
    pod.containers.add(name=args.name, image=args.image, command=command)
    return job


def job_from_cron_job(name: str, namespace: str, cj: batch_pb2.CronJob) -> batch_pb2.Job:
    """A Job from `cj`'s jobTemplate, as `kubectl create job --from=cronjob/...`."""
    template = cj.spec.job_template
    job = batch_pb2.Job(api_version=JOB.api_version, kind=JOB.name)
    job.metadata.name = name
    job.metadata.namespace = namespace
    job.metadata.labels.update(template.metadata.labels)
    job.metadata.annotations.update(template.metadata.annotations)
    job.metadata.annotations["cronjob.kubernetes.io/instantiate"] = "manual"
    job.metadata.owner_references.append(
        meta_pb2.OwnerReference(
            api_version=CRON_JOB.api_version,
            kind=CRON_JOB.name,
            name=cj.metadata.name,
            uid=cj.metadata.uid,
            controller=True,
        )
    )
    job.spec.CopyFrom(template.spec)
    return job


async def run_job(args: argparse.Namespace, ctx: Context) -> int:
    command = parse_job_words(args)
    if not args.from_object:
        return await _create(JOB, job_of(args, command), args, ctx)
    if args.image or command:
        raise CliError("error: --from cannot be combined with --image or a command")
    kind_text, slash, source = args.from_object.partition("/")
    if not slash or not source or resolve_kind(kind_text) is not CRON_JOB:
        raise CliError(f"error: --from={args.from_object}: from must be of the form cronjob/NAME")
    namespace = namespace_for(JOB, args)
    async with ctx.client() as api:
        cj = await api.cron_jobs.get(source, namespace)
    return await _create(JOB, job_from_cron_job(args.name, namespace, cj), args, ctx)


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
