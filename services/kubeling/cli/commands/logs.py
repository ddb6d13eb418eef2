"""`kubeling logs`: print (or follow) a pod container's log, as `kubectl logs` does."""

from __future__ import annotations

import argparse
import asyncio
import math

import grpc

from kubeling.api.kinds import POD
from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.cli.options import add_namespace, namespace_for
from kubeling.cli.resources import resolve_kind
from kubeling.client.pods import pod_logs
from kubeling.common.duration import parse_duration


def register(subparsers: SubParsers) -> None:
    parser = add_command(subparsers, "logs", run, "Print the logs of a container in a pod.")
    parser.add_argument("pod", metavar="POD | pod/NAME")
    parser.add_argument("-c", "--container", default="", help="the container (if the pod has many)")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep streaming new output until Ctrl-C"
    )
    parser.add_argument(
        "--tail", type=int, default=-1, metavar="N", help="only the last N lines (-1: all)"
    )
    parser.add_argument(
        "--since",
        type=since_seconds,
        default=None,
        metavar="DURATION",
        help="only lines newer than this, e.g. 10s, 5m, 1h",
    )
    parser.add_argument(
        "--timestamps", action="store_true", help="prefix each line with its RFC3339 time"
    )
    parser.add_argument(
        "-p",
        "--previous",
        action="store_true",
        help="the previous, terminated instance of the container",
    )
    add_namespace(parser)


def since_seconds(text: str) -> int:
    """Whole seconds (rounded up, as kubectl does) of a Go duration like "1h30m"."""
    try:
        seconds = math.ceil(parse_duration(text, bare_seconds=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 10s, 5m, 1h)") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("--since must be greater than 0")
    return seconds


def pod_name(text: str) -> str:
    """NAME from "NAME" or "pod/NAME" (any spelling of the pod kind)."""
    kind_text, slash, name = text.partition("/")
    if not slash:
        return text
    if not name or resolve_kind(kind_text) is not POD:
        raise CliError(f"error: cannot get logs of {text!r}: only pods have logs")
    return name


def kubelet_error(exc: grpc.RpcError) -> CliError | None:
    """The master answers UNAVAILABLE when the pod's kubelet is down: say so rather
    than letting it read as "cannot reach the kubeling server"."""
    details = exc.details() if hasattr(exc, "details") else ""
    if exc.code() == grpc.StatusCode.UNAVAILABLE and "kubelet" in (details or ""):
        return CliError(f"Error from server: {details}")
    return None


async def run(args: argparse.Namespace, ctx: Context) -> int:
    name = pod_name(args.pod)
    async with ctx.client() as api:
        chunks = pod_logs(
            api,
            name,
            namespace=namespace_for(POD, args),
            container=args.container,
            follow=args.follow,
            tail_lines=args.tail if args.tail >= 0 else None,
            since_seconds=args.since,
            timestamps=args.timestamps,
            previous=args.previous,
        )
        try:
            async for text in chunks:
                ctx.stdout.write(text)
                ctx.stdout.flush()
        except grpc.aio.AioRpcError as exc:
            raise kubelet_error(exc) or exc from None
        except asyncio.CancelledError:
            # Ctrl-C (asyncio.run cancels us) is how a followed log is meant to end.
            return 0
        finally:
            await chunks.aclose()
    return 0
