"""`kubeling scale deployment|replicaset|statefulset NAME --replicas N`: set spec.replicas."""

from __future__ import annotations

import argparse

import grpc

from kubeling.api.kinds import DEPLOYMENT, REPLICA_SET, STATEFUL_SET
from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.cli.options import add_namespace, namespace_for
from kubeling.cli.resources import object_name, parse_targets

_SCALABLE = (DEPLOYMENT, REPLICA_SET, STATEFUL_SET)


def register(subparsers: SubParsers) -> None:
    parser = add_command(subparsers, "scale", run, "Set the replica count of a workload.")
    parser.add_argument("resources", nargs="+", metavar="KIND NAME | KIND/NAME")
    parser.add_argument("--replicas", type=int, required=True, help="the new replica count")
    add_namespace(parser)


async def run(args: argparse.Namespace, ctx: Context) -> int:
    if args.replicas < 0:
        raise CliError("error: --replicas must be 0 or more")
    kinds, targets = parse_targets(args.resources)
    if kinds or not targets:
        raise CliError("error: give a name: scale KIND NAME or KIND/NAME")
    async with ctx.client() as api:
        for target in targets:
            if target.kind not in _SCALABLE:
                raise CliError(f"error: {target.kind.plural} cannot be scaled")
            resource = api.resource(target.kind)
            namespace = namespace_for(target.kind, args)
            # Re-read and retry on conflicts: a controller may write meanwhile.
            for attempt in range(5):
                obj = await resource.get(target.name, namespace)
                obj.spec.replicas = args.replicas
                try:
                    await resource.update(obj)
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.ABORTED or attempt == 4:
                        raise
            ctx.out(f"{object_name(target.kind, target.name)} scaled")
    return 0
