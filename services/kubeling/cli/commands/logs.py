"""`kubeling logs`: print (or follow) a pod container's log, as `kubectl logs` does.

`logs deploy/NAME` (rs/, sts/, job/, svc/) or `logs -l SELECTOR` shows every
selected pod's containers, each line prefixed [pod/NAME/CONTAINER], and with -f
follows pods as they come and go (cli/multilogs.py)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import math

import grpc

from kubeling.api.kinds import POD
from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.cli.multilogs import LogOptions, show_selected
from kubeling.cli.options import add_namespace, namespace_for
from kubeling.cli.podselect import split_reference, workload_selector
from kubeling.cli.resources import resolve_kind
from kubeling.client.pods import pod_logs
from kubeling.common.duration import parse_duration


def register(subparsers: SubParsers) -> None:
    parser = add_command(subparsers, "logs", run, "Print the logs of a container in a pod.")
    parser.add_argument(
        "pod", nargs="?", default="", metavar="POD | TYPE/NAME", help="pod/NAME, deploy/NAME, ..."
    )
    parser.add_argument(
        "-l", "--selector", default="", help="every pod this label selector selects"
    )
    parser.add_argument(
        "--max-log-requests",
        type=int,
        default=5,
        metavar="N",
        help="at most this many concurrent log streams with a selector or workload (default 5)",
    )
    parser.add_argument(
        "--since-time",
        type=since_time,
        default=None,
        metavar="RFC3339",
        help="only lines from this time on, e.g. 2026-01-02T15:04:05Z",
    )
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


def since_time(text: str) -> int:
    """--since-time as seconds before now (at least 1)."""
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid time {text!r} (RFC3339)") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: needs a zone (Z or +HH:MM)")
    now = datetime.datetime.now(datetime.UTC)
    return max(1, math.ceil((now - when).total_seconds()))


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


async def _selected(args: argparse.Namespace, ctx: Context) -> int:
    namespace = namespace_for(POD, args)
    options = LogOptions(
        container=args.container,
        follow=args.follow,
        tail_lines=args.tail if args.tail >= 0 else None,
        since_seconds=args.since if args.since is not None else args.since_time,
        timestamps=args.timestamps,
        previous=args.previous,
        max_requests=args.max_log_requests,
    )
    async with ctx.client() as api:
        try:
            selector = args.selector
            if not selector:
                kind, name = split_reference(args.pod)
                selector = await workload_selector(api, kind, name, namespace)
            return await show_selected(api, namespace, selector, options, ctx)
        except grpc.aio.AioRpcError as exc:
            raise kubelet_error(exc) or exc from None
        except asyncio.CancelledError:
            return 0  # Ctrl-C ends a followed log


async def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.selector and args.pod:
        raise CliError("error: only one of a selector (-l) or a POD/TYPE/NAME may be given")
    if not args.selector and not args.pod:
        raise CliError("error: expected POD, TYPE/NAME or -l SELECTOR")
    if args.max_log_requests < 1:
        raise CliError("error: --max-log-requests must be at least 1")
    if args.selector or split_reference(args.pod)[0] is not POD:
        return await _selected(args, ctx)
    if args.since is not None and args.since_time is not None:
        raise CliError("error: at most one of --since or --since-time may be used")
    name = pod_name(args.pod)
    async with ctx.client() as api:
        chunks = pod_logs(
            api,
            name,
            namespace=namespace_for(POD, args),
            container=args.container,
            follow=args.follow,
            tail_lines=args.tail if args.tail >= 0 else None,
            since_seconds=args.since if args.since is not None else args.since_time,
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
