"""`kubeling`: parse arguments, pick the server, run one subcommand.

Every failure a user can cause ends here as one line on stderr and a non-zero
exit status; tracebacks are kept for real bugs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from kubeling.cli.commands import register_all
from kubeling.cli.config import DEFAULT_SERVER, SERVER_ENV, Target, normalize_server, resolve
from kubeling.cli.context import DEFAULT_TIMEOUT, Context
from kubeling.cli.errors import CliError, server_error
from kubeling.client.config import CONFIG_ENV

EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubeling",
        description="Control a kubeling cluster, in the manner of kubectl.",
    )
    # Accepted before and after the subcommand: SUPPRESS keeps the subparser's
    # copy from overwriting a value given before it.
    parser.add_argument(
        "--server",
        "-s",
        default=None,
        metavar="HOST:PORT[,HOST:PORT...]",
        help="the API server, or several masters of one cluster comma-separated (used one "
        f"at a time, another when one is down; default: ${SERVER_ENV}, the config's server, "
        "localhost:6443)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"the config with the server, CA and client certificate (default: ${CONFIG_ENV}, "
        "~/.kubeling/config, a local master's admin.conf)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="give up on a request after this long",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_all(subparsers)
    for sub in subparsers.choices.values():
        sub.add_argument(
            "--server", "-s", default=argparse.SUPPRESS, metavar="HOST:PORT[,HOST:PORT...]"
        )
        sub.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="PATH")
    return parser


def target_for(args: argparse.Namespace) -> Target:
    """The server and credentials; a command that does not talk to the API server
    (`lab`) still runs when the config is broken (a lab's, whose files are gone)."""
    try:
        return resolve(args.server, args.config)
    except CliError:
        if getattr(args, "uses_server", True):
            raise
        return Target(normalize_server(args.server) if args.server else DEFAULT_SERVER)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    ctx: Context | None = None
    try:
        ctx = Context(target_for(args), timeout=args.request_timeout)
        status: int = asyncio.run(args.run(args, ctx))
        return status
    except CliError as exc:
        print(exc.message, file=sys.stderr)
        return exc.exit_code
    except grpc.RpcError as exc:
        if ctx is None:
            print(server_error(exc, "?"), file=sys.stderr)
        else:
            print(server_error(exc, ctx.server, source=ctx.target.source), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Ctrl-C is how a watch ends, so that is a clean exit.
        return (
            0
            if getattr(args, "watch", False) or getattr(args, "watch_only", False)
            else (EXIT_INTERRUPTED)
        )
    except BrokenPipeError:
        # `kubeling get pods | head`: the reader left; not an error worth a message.
        sys.stderr.close()
        return 1


if __name__ == "__main__":
    sys.exit(main())
