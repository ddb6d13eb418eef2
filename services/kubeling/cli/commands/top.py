"""`kubeling top pods|nodes`: CPU (millicores) and memory (working set) of running
containers, from Pods/Top (the master asks each node's kubelet for CRI stats).

A node's figures are the sum over the pods it runs that the caller may see, with
the share of its allocatable (else capacity) CPU and memory."""

from __future__ import annotations

import argparse
from collections import defaultdict

from kubeling.api.kinds import POD
from kubeling.api.quantity import QuantityError, parse_quantity
from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.cli.options import namespace_for
from kubeling.cli.printers import table_text
from kubeling.client.pods import pod_top
from kubeling.v1 import core_pb2


def register(subparsers: SubParsers) -> None:
    parser = add_command(subparsers, "top", run, "Show CPU and memory use of pods or nodes.")
    parser.add_argument("what", choices=("pods", "pod", "po", "nodes", "node", "no"))
    parser.add_argument("name", nargs="?", default="", help="one pod or node")
    parser.add_argument("-n", "--namespace", default=None, help="the namespace (default: default)")
    parser.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    parser.add_argument("-l", "--selector", default="", help="label selector of the pods")
    parser.add_argument("--containers", action="store_true", help="a row per container")
    parser.add_argument("--no-headers", action="store_true", help="leave the header out")


def memory_text(value: int) -> str:
    return f"{value // (1024 * 1024)}Mi"


def _share(used: float, total: str) -> str:
    try:
        whole = float(parse_quantity(total))
    except QuantityError:
        return "<unknown>"
    return f"{round(used / whole * 100)}%" if whole else "<unknown>"


async def run(args: argparse.Namespace, ctx: Context) -> int:
    nodes = args.what in ("nodes", "node", "no")
    namespace = "" if nodes else namespace_for(POD, args)
    async with ctx.client() as api:
        usage = await pod_top(api, namespace, "" if nodes else args.name, args.selector)
        node_objects: list[core_pb2.Node] = []
        if nodes:
            if args.name:
                node_objects = [await api.nodes.get(args.name)]
            else:
                node_objects = list((await api.nodes.list("")).items)
    for unreachable in usage.unreachable_nodes:
        ctx.err(f"warning: no metrics from node {unreachable}: its kubelet did not answer")
    header: list[str]
    rows: list[list[str]] = []
    if nodes:
        cpu: defaultdict[str, int] = defaultdict(int)
        memory: defaultdict[str, int] = defaultdict(int)
        for c in usage.containers:
            cpu[c.node_name] += c.cpu_millicores
            memory[c.node_name] += c.memory_working_set_bytes
        header = ["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"]
        for node in sorted(node_objects, key=lambda n: n.metadata.name):
            name = node.metadata.name
            total = node.status.allocatable or node.status.capacity
            rows.append([
                name, f"{cpu[name]}m", _share(cpu[name] / 1000, total.get("cpu", "")),
                memory_text(memory[name]), _share(memory[name], total.get("memory", "")),
            ])  # fmt: skip
    else:
        if args.name and not usage.containers:
            raise CliError(f'error: metrics not available yet for pod "{args.name}"')
        all_ns = getattr(args, "all_namespaces", False)
        header = (["NAMESPACE"] if all_ns else []) + ["NAME"]
        header += (["CONTAINER"] if args.containers else []) + ["CPU(cores)", "MEMORY(bytes)"]
        grouped: dict[tuple[str, ...], list[int]] = {}
        for c in usage.containers:
            key = ((c.namespace,) if all_ns else ()) + (c.pod,)
            if args.containers:
                key += (c.container,)
            total_now = grouped.setdefault(key, [0, 0])
            total_now[0] += c.cpu_millicores
            total_now[1] += c.memory_working_set_bytes
        for key in sorted(grouped):
            used_cpu, used_memory = grouped[key]
            rows.append([*key, f"{used_cpu}m", memory_text(used_memory)])
        if not rows:
            where = f' in namespace "{namespace}"' if namespace else ""
            ctx.err(f"No resources found{where}.")
            return 0
    ctx.stdout.write(table_text(None if args.no_headers else header, rows))
    ctx.stdout.flush()
    return 0
