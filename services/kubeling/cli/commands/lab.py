"""`kubeling lab up|status|exec|stop|start|down`: a multi-node cluster on this machine,
one network namespace per node (see kubeling.lab); with `--masters N --store etcd`
N masters on an N-member etcd cluster, each master in its own namespace. The cluster
DNS runs as an add-on (pods, deploy/addons/dns.yaml) unless `--no-dns`; `--proxy=pod`
runs kube-proxy as a DaemonSet instead of processes."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.config import config_path, forget_server, save_config
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.lab.lab import (
    MAX_MASTERS,
    PROXY_MODES,
    STORES,
    Lab,
    LabError,
    LabOptions,
    default_dir,
)

T = TypeVar("T")


def register(subparsers: SubParsers) -> None:
    parser = add_command(subparsers, "lab", _usage, "A multi-node cluster on this machine.")
    # The lab manages its own master: a broken default config must not stop it.
    parser.set_defaults(uses_server=False)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    up = add_command(actions, "up", run_up, "Start a master and N worker nodes.")
    up.add_argument("--nodes", type=int, default=2, help="worker nodes (default 2)")
    up.add_argument(
        "--masters",
        type=int,
        default=1,
        help=f"masters, each in its own namespace (1 to {MAX_MASTERS}; more than 1 needs "
        "--store etcd); default 1",
    )
    up.add_argument(
        "--store",
        choices=STORES,
        default="sqlite",
        help="sqlite (default: one master, its own file) or etcd (an etcd member beside "
        "each master, mutual TLS from the cluster CA)",
    )
    up.add_argument(
        "--proxy",
        choices=PROXY_MODES,
        default="process",
        help="process (default: a kube-proxy process per node, as a systemd unit runs it) "
        "or pod (the kube-proxy DaemonSet of deploy/addons/kube-proxy.yaml, as kubeadm)",
    )
    up.add_argument(
        "--no-dns",
        dest="dns",
        action="store_false",
        help="no cluster DNS add-on (deploy/addons/dns.yaml; pods then resolve with the "
        "node's resolv.conf)",
    )
    status = add_command(actions, "status", run_status, "What runs where.")
    down = add_command(actions, "down", run_down, "Remove everything the lab made.")
    execute = add_command(actions, "exec", run_exec, "Run a command inside a node.")
    execute.add_argument(
        "node", help="a node name (kubeling get nodes), or master (master-N, etcd-N)"
    )
    execute.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")
    stop = add_command(
        actions,
        "stop",
        run_stop,
        "Stop a node's kubelet, proxy and containerd, the master, a master or an etcd member.",
    )
    stop.add_argument("node", help="a node name, master, master-N or etcd-N")
    start = add_command(actions, "start", run_start, "Start a stopped node or process again.")
    start.add_argument("node", help="a node name, master, master-N or etcd-N")
    for sub in (up, status, down, execute, stop, start):
        sub.add_argument(
            "--dir", type=Path, default=None, help=f"the lab's folder (default {default_dir()})"
        )


async def _usage(args: argparse.Namespace, ctx: Context) -> int:
    raise CliError("error: give an action: lab up|status|exec|stop|start|down")


def _lab(args: argparse.Namespace) -> Lab:
    return Lab(args.dir)


async def _run(fn: Callable[..., T], *args: Any) -> T:
    """A blocking lab call, off the event loop, its errors as CLI errors."""
    try:
        return await asyncio.to_thread(fn, *args)
    except LabError as exc:
        raise CliError(f"error: {exc}") from None


async def run_up(args: argparse.Namespace, ctx: Context) -> int:
    lab = _lab(args)
    options = LabOptions(
        nodes=args.nodes,
        masters=args.masters,
        store=args.store,
        dns=args.dns,
        proxy=args.proxy,
    )
    await _run(lab.up, options, lambda m: ctx.out(f"==> {m}"))
    path = save_config(lab.server, tls_files=lab.admin_files())
    ctx.out(
        f"lab is up; `kubeling` now talks to {lab.server} as the lab's admin (saved in {path}; "
        f"elsewhere: export KUBELING_CONFIG={lab.config_path})"
    )
    return 0


async def run_status(args: argparse.Namespace, ctx: Context) -> int:
    rows = await _run(_lab(args).status)
    table = Table(box=None, pad_edge=False)
    for column in ("NODE", "NETNS", "ADDRESS", "POD CIDR", "PROCESSES", "LOGS"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console(file=ctx.stdout, width=200).print(table)
    return 0


async def run_down(args: argparse.Namespace, ctx: Context) -> int:
    lab = _lab(args)
    await _run(lab.down, lambda m: ctx.out(f"==> {m}"))
    # The default config named the lab's master and its (now removed) credential.
    if forget_server(lab.server):
        ctx.out(f"removed the lab's master from {config_path()}")
    ctx.out("lab is down")
    return 0


async def run_exec(args: argparse.Namespace, ctx: Context) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("error: give a command: lab exec NODE -- CMD ARGS...")
    argv = await _run(_lab(args).exec_command, args.node, command)
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # the command takes over the terminal and exit status


async def run_stop(args: argparse.Namespace, ctx: Context) -> int:
    ctx.out(await _run(_lab(args).stop, args.node))
    return 0


async def run_start(args: argparse.Namespace, ctx: Context) -> int:
    ctx.out(await _run(_lab(args).start, args.node))
    return 0
