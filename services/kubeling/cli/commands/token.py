"""`kubeling token create|list|delete`: the master's bootstrap tokens (kubeadm token),
through kubeling.v1.Tokens, with the CLI's credentials (an admin's: the master
authorizes these calls like any other)."""

from __future__ import annotations

import argparse
import time

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.config import DEFAULT_PORT
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.cli.printers import table_text
from kubeling.cli.timefmt import human_duration
from kubeling.common import machine, pki, targets
from kubeling.common.duration import parse_duration
from kubeling.common.peer import is_loopback_address
from kubeling.v1 import tokens_pb2

_SERVICE = "/kubeling.v1.Tokens/"
# Where deploy/README.md and the master's join command keep a worker's token.
TOKEN_PATH = "/etc/kubeling/join-token"


def register(subparsers: SubParsers) -> None:
    parser = add_command(
        subparsers, "token", _usage, "Manage the bootstrap tokens nodes join with."
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    create = add_command(
        actions, "create", run_create, "Make a token and print it (the only time it is shown)."
    )
    create.add_argument(
        "--ttl", default="24h", help='how long it is valid: 24h, 90m, 3600 ("0": never expires)'
    )
    create.add_argument("--description", default="", help="what the token is for")
    create.add_argument(
        "--print-join-command",
        action="store_true",
        help="print the commands a worker runs to join with it (token file, kubelet flags "
        "with the CA pin) instead of the bare token",
    )
    add_command(actions, "list", run_list, "The tokens: ID, time left, description (no secrets).")
    delete = add_command(
        actions, "delete", run_delete, "Delete tokens: nodes can no longer use them."
    )
    delete.add_argument("ids", nargs="+", metavar="ID")


async def _usage(args: argparse.Namespace, ctx: Context) -> int:
    raise CliError("error: give an action: token create | token list | token delete ID")


async def _call(ctx: Context, method: str, request: Message, response: type[Message]) -> Message:
    async with ctx.channel() as channel:
        call = channel.unary_unary(
            _SERVICE + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString,
        )
        try:
            reply: Message = await call(request, timeout=ctx.timeout)
            return reply
        except grpc.aio.AioRpcError as exc:
            # PERMISSION_DENIED goes to main, which names the credentials used.
            if exc.code() in (
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.INVALID_ARGUMENT,
            ):
                raise CliError(f"error: {exc.details()}") from None
            raise


async def run_create(args: argparse.Namespace, ctx: Context) -> int:
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        raise CliError(f"error: --ttl: {exc}") from None
    if ttl < 0:
        raise CliError("error: --ttl must not be negative (0: never expires)")
    request = tokens_pb2.CreateTokenRequest(description=args.description)
    request.ttl.CopyFrom(Duration(seconds=int(ttl), nanos=int((ttl % 1) * 1e9)))
    pin = ""
    if args.print_join_command:
        # Checked before the token exists: no token is made that cannot be used.
        if ctx.target.credentials is None:
            raise CliError(
                f"error: --print-join-command needs the cluster's CA from a config "
                f"({ctx.target.source})"
            )
        pin = pki.ca_pin(ctx.target.credentials.ca_pem)
    reply = await _call(ctx, "Create", request, tokens_pb2.CreateTokenResponse)
    assert isinstance(reply, tokens_pb2.CreateTokenResponse)
    if not args.print_join_command:
        ctx.out(reply.token)
        return 0
    master = worker_address(ctx.server)
    # `echo` is a shell builtin: the token is in no process's command line.
    ctx.out(f"(umask 077; mkdir -p /etc/kubeling; echo {reply.token} > {TOKEN_PATH})")
    ctx.out(
        f"kubeling-kubelet --master {master} --token-file {TOKEN_PATH} "
        f"--discovery-token-ca-cert-hash {pin}"
    )
    ctx.out(
        f"kubeling-proxy --master {master} --token-file {TOKEN_PATH} "
        f"--discovery-token-ca-cert-hash {pin}"
    )
    return 0


def worker_address(server: str) -> str:
    """The master's address as workers reach it: the CLI's server (each of a list),
    unless that is this machine's loopback or socket (then this machine's address,
    port 6443)."""
    if targets.is_list(server):
        return ",".join(dict.fromkeys(worker_address(s) for s in targets.split_items(server)))
    if server.startswith("unix:"):
        return f"{machine.node_ip()}:{DEFAULT_PORT}"
    host, _, port = server.rpartition(":")
    if is_loopback_address(host.strip("[]")):
        return f"{machine.node_ip()}:{port}"
    return server


def _left(token: tokens_pb2.BootstrapToken, now: float) -> str:
    if not token.HasField("expires"):
        return "<forever>"
    if token.expired:
        return "<expired>"
    return human_duration(token.expires.seconds - now)


async def run_list(args: argparse.Namespace, ctx: Context) -> int:
    reply = await _call(ctx, "List", tokens_pb2.ListTokensRequest(), tokens_pb2.ListTokensResponse)
    assert isinstance(reply, tokens_pb2.ListTokensResponse)
    now = time.time()
    rows = [
        [
            t.id,
            _left(t, now),
            t.expires.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
            if t.HasField("expires")
            else "<never>",
            t.description or "<none>",
        ]
        for t in reply.tokens
    ]
    if not rows:
        ctx.err("No bootstrap tokens.")
        return 0
    ctx.stdout.write(table_text(["ID", "TTL", "EXPIRES", "DESCRIPTION"], rows))
    ctx.stdout.flush()
    return 0


async def run_delete(args: argparse.Namespace, ctx: Context) -> int:
    for token_id in args.ids:
        await _call(
            ctx,
            "Delete",
            tokens_pb2.DeleteTokenRequest(id=token_id),
            tokens_pb2.DeleteTokenResponse,
        )
        ctx.out(f"bootstrap token {token_id.partition('.')[0]} deleted")
    return 0
