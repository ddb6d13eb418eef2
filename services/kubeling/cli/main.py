"""`kubeling`: parse arguments, pick the server, run one subcommand.

Every failure a user can cause ends here as one line on stderr and a non-zero
exit status; tracebacks are kept for real bugs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import grpc

from kubeling.cli.commands import register_all
from kubeling.cli.config import SERVER_ENV, resolve_server
from kubeling.cli.context import DEFAULT_TIMEOUT, Context
from kubeling.cli.errors import CliError, server_error

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
        metavar="HOST:PORT",
        help=f"the API server (default: ${SERVER_ENV}, ~/.kubeling/config, localhost:6443)",
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
        sub.add_argument("--server", "-s", default=argparse.SUPPRESS, metavar="HOST:PORT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    ctx: Context | None = None
    try:
        ctx = Context(server=resolve_server(args.server), timeout=args.request_timeout)
        status: int = asyncio.run(args.run(args, ctx))
        return status
    except CliError as exc:
        print(exc.message, file=sys.stderr)
        return exc.exit_code
    except grpc.RpcError as exc:
        print(server_error(exc, ctx.server if ctx else "?"), file=sys.stderr)
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
