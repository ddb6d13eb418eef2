"""Types every subcommand module uses."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from kubeling.cli.context import Context

# A subcommand body: returns the process exit status.
Run = Callable[[argparse.Namespace, Context], Awaitable[int]]
if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at runtime in Python 3.11
    SubParsers = argparse._SubParsersAction


def add_command(
    subparsers: SubParsers, name: str, run: Run, help_text: str, aliases: tuple[str, ...] = ()
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=help_text, description=help_text, aliases=list(aliases)
    )
    parser.set_defaults(run=run)
    return parser
