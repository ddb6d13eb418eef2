"""`kubeling exec POD [-c C] -- CMD ARGS...`: run a command in a container, print
its output and exit with its exit code (not interactive: no stdin, no TTY)."""

from __future__ import annotations

import argparse

import grpc

from kubeling.api.kinds import POD
from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.commands.logs import kubelet_error, pod_name
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.cli.options import namespace_for
from kubeling.client.pods import pod_exec


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--container", default="", help="the container (if the pod has many)")
    parser.add_argument("-n", "--namespace", default=None, help="the namespace (default: default)")
    parser.add_argument(
        "--timeout",
        type=int,
        default=0,
        metavar="SECONDS",
        help="give up on the command after this long (0: no limit)",
    )


def register(subparsers: SubParsers) -> None:
    parser = add_command(
        subparsers, "exec", run, "Run a command in a container and print its output."
    )
    _add_options(parser)
    # Everything from POD on is read by run(): argparse cannot take options after a
    # positional and still leave the command after "--" alone.
    parser.add_argument(
        "words", nargs=argparse.REMAINDER, metavar="POD [-c C] [-n NS] -- CMD [ARGS ...]"
    )


def _parse_words(args: argparse.Namespace) -> tuple[str, list[str]]:
    words = list(args.words)
    if words and words[0] == "--":
        words.pop(0)
    if not words or words[0].startswith("-"):
        raise CliError("error: expected 'exec POD_NAME COMMAND [ARG1] [ARG2] ... [ARGN]'")
    pod, *rest = words
    dash = "--" in rest
    split = rest.index("--") if dash else len(rest)
    before, command = rest[:split], rest[split + 1 :]
    options = argparse.ArgumentParser(prog="kubeling exec", add_help=False)
    _add_options(options)
    # kubectl still accepts the old `exec POD CMD` form without "--".
    # (not "command": the top-level parser keeps the subcommand's name there)
    options.add_argument("bare_command", nargs="*", metavar="COMMAND")
    options.parse_args(before, namespace=args)
    if dash and args.bare_command:
        raise CliError("error: put the whole command after --: exec POD -- CMD [ARGS ...]")
    command = command if dash else list(args.bare_command)
    if not command:
        raise CliError("error: you must specify at least one command for the container")
    return pod, command


async def run(args: argparse.Namespace, ctx: Context) -> int:
    pod, command = _parse_words(args)
    async with ctx.client() as api:
        try:
            result = await pod_exec(
                api,
                pod_name(pod),
                command,
                namespace=namespace_for(POD, args),
                container=args.container,
                timeout_seconds=args.timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise kubelet_error(exc) or exc from None
    ctx.stdout.write(result.stdout)
    ctx.stdout.flush()
    ctx.stderr.write(result.stderr)
    ctx.stderr.flush()
    if result.exit_code:
        ctx.err(f"command terminated with exit code {result.exit_code}")
    return int(result.exit_code)
