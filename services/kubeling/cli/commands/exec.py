"""`kubeling exec POD [-c C] [-i] [-t] -- CMD ARGS...`: run a command in a container
and exit with its exit code.

Without -i/-t it is one call (Pods/Exec) that returns the output at the end. With
-i (stdin) or -t (a tty: raw local terminal, its size and resizes sent along) it is
an interactive session over Pods/ExecStream, output shown as it comes."""

from __future__ import annotations

import argparse

import grpc

from kubeling.api.kinds import POD
from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.commands.logs import kubelet_error, pod_name
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.cli.options import namespace_for
from kubeling.cli.podselect import pick_pod, split_reference
from kubeling.cli.terminal import run_session, stdin_is_terminal, terminal_size
from kubeling.client import Client
from kubeling.client.pods import open_exec, pod_exec


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--container", default="", help="the container (if the pod has many)")
    parser.add_argument(
        "-i", "--stdin", action="store_true", help="pass this terminal's stdin to the command"
    )
    parser.add_argument("-t", "--tty", action="store_true", help="give the command a terminal")
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


async def _pod(api: Client, reference: str, namespace: str) -> str:
    """The pod NAME, pod/NAME, deploy/NAME, svc/NAME ... means (one of a workload's
    ready pods, as kubectl picks)."""
    if split_reference(reference)[0] is POD:
        return pod_name(reference)
    return str((await pick_pod(api, reference, namespace)).metadata.name)


async def run(args: argparse.Namespace, ctx: Context) -> int:
    pod, command = _parse_words(args)
    if args.stdin or args.tty:
        return await _interactive(args, ctx, pod, command)
    async with ctx.client() as api:
        try:
            result = await pod_exec(
                api,
                await _pod(api, pod, namespace_for(POD, args)),
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


async def _interactive(args: argparse.Namespace, ctx: Context, pod: str, command: list[str]) -> int:
    tty = args.tty
    if tty and not (args.stdin and stdin_is_terminal(ctx)):
        # As kubectl: a tty only makes sense for a terminal's input.
        ctx.err("Unable to use a TTY - input is not a terminal or the right kind of file")
        tty = False
    async with ctx.client() as api:
        try:
            call = await open_exec(
                api,
                await _pod(api, pod, namespace_for(POD, args)),
                command,
                namespace=namespace_for(POD, args),
                container=args.container,
                stdin=args.stdin,
                tty=tty,
                size=terminal_size(ctx.stdin) if tty else None,
            )
            code = await run_session(call, ctx, stdin=args.stdin, tty=tty)
        except grpc.aio.AioRpcError as exc:
            raise kubelet_error(exc) or exc from None
    if code:
        ctx.err(f"command terminated with exit code {code}")
    return code
