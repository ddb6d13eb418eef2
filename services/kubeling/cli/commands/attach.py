"""`kubeling attach POD [-c C] [-i] [-t]`: join a running container's main process,
its output as it comes and (with -i) this terminal's input to its stdin, over
Pods/Attach. The container must have been started with stdin open to take input."""

from __future__ import annotations

import argparse

import grpc

from kubeling.api.kinds import POD
from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.commands.logs import kubelet_error
from kubeling.cli.context import Context
from kubeling.cli.options import namespace_for
from kubeling.cli.podselect import pick_pod
from kubeling.cli.terminal import run_session, stdin_is_terminal, terminal_size
from kubeling.client.pods import open_attach


def register(subparsers: SubParsers) -> None:
    parser = add_command(subparsers, "attach", run, "Attach to a running container's process.")
    parser.add_argument("pod", metavar="POD", help="NAME, pod/NAME, deploy/NAME, svc/NAME ...")
    parser.add_argument("-c", "--container", default="", help="the container (if the pod has many)")
    parser.add_argument("-n", "--namespace", default=None, help="the namespace (default: default)")
    parser.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the container")
    parser.add_argument("-t", "--tty", action="store_true", help="the container's stdin is a tty")


async def run(args: argparse.Namespace, ctx: Context) -> int:
    namespace = namespace_for(POD, args)
    tty = args.tty
    if tty and not (args.stdin and stdin_is_terminal(ctx)):
        ctx.err("Unable to use a TTY - input is not a terminal or the right kind of file")
        tty = False
    async with ctx.client() as api:
        try:
            pod = await pick_pod(api, args.pod, namespace)
            call = await open_attach(
                api,
                pod.metadata.name,
                namespace=namespace,
                container=args.container,
                stdin=args.stdin,
                tty=tty,
                size=terminal_size(ctx.stdin) if tty else None,
            )
            return await run_session(call, ctx, stdin=args.stdin, tty=tty)
        except grpc.aio.AioRpcError as exc:
            raise kubelet_error(exc) or exc from None
