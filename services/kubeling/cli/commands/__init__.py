"""The subcommands, in the order `kubeling --help` lists them.

Each module defines `register(subparsers)`, which adds its parser and sets `run`
(an `async (args, ctx) -> exit status`). To add a subcommand (logs, exec, scale,
rollout, lab, ...), write a module with `register` and list it here.
"""

from __future__ import annotations

from kubeling.cli.commands import apply as apply
from kubeling.cli.commands import attach as attach
from kubeling.cli.commands import cp as cp
from kubeling.cli.commands import create as create
from kubeling.cli.commands import delete as delete
from kubeling.cli.commands import describe as describe
from kubeling.cli.commands import exec as exec
from kubeling.cli.commands import get as get
from kubeling.cli.commands import image as image
from kubeling.cli.commands import lab as lab
from kubeling.cli.commands import logs as logs
from kubeling.cli.commands import portforward as portforward
from kubeling.cli.commands import proxy as proxy
from kubeling.cli.commands import rollout as rollout
from kubeling.cli.commands import scale as scale
from kubeling.cli.commands import token as token
from kubeling.cli.commands import top as top
from kubeling.cli.commands import user as user
from kubeling.cli.commands.base import SubParsers

COMMANDS = (
    get, describe, create, apply, delete, logs, exec, attach, portforward, cp, top, scale,
    rollout, proxy, token, user, lab, image,
)  # fmt: skip


def register_all(subparsers: SubParsers) -> None:
    for module in COMMANDS:
        module.register(subparsers)
