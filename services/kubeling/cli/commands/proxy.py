"""`kubeling proxy explain NODE IP:PORT[/PROTO]` and `kubeling proxy status NODE`: ask a
node's kube-proxy (kubeling.v1.Proxy) what it has installed in the kernel."""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc
from google.protobuf.message import Message

from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.common import rpc
from kubeling.common.tls import Credentials
from kubeling.lab.lab import Lab
from kubeling.proxy.server import DEFAULT_PORT
from kubeling.v1 import proxy_pb2

_SERVICE = "/kubeling.v1.Proxy/"


def register(subparsers: SubParsers) -> None:
    parser = add_command(subparsers, "proxy", _usage, "Ask a node's kube-proxy.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    explain = add_command(
        actions, "explain", run_explain, "Where a new connection to IP:PORT goes on NODE."
    )
    explain.add_argument("node")
    explain.add_argument("target", metavar="IP:PORT[/PROTO]")
    status = add_command(actions, "status", run_status, "What the proxy on NODE has synced.")
    status.add_argument("node")
    for sub in (explain, status):
        sub.add_argument(
            "--proxy",
            default="",
            help=f"the proxy's address (default: the node's InternalIP, port {DEFAULT_PORT})",
        )


async def _usage(args: argparse.Namespace, ctx: Context) -> int:
    raise CliError("error: give an action: proxy explain NODE IP:PORT | proxy status NODE")


def parse_target(text: str) -> tuple[str, int, str]:
    """ "10.96.0.10:80/udp" -> ("10.96.0.10", 80, "UDP")."""
    address, _, protocol = text.partition("/")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise CliError(f'error: "{text}" is not IP:PORT[/PROTO]')
    return host, int(port), (protocol or "TCP").upper()


def _lab_node(args: argparse.Namespace) -> tuple[Lab, str] | None:
    """The lab and the node's IP when NODE is a node of the lab on this machine."""
    if args.proxy:
        return None
    lab = Lab()
    if lab.state is None:
        return None
    for node in lab.state.nodes:
        if node.name == args.node:
            return lab, node.ip
    return None


async def _in_lab_namespace(args: argparse.Namespace, ctx: Context) -> int | None:
    """With the lab's kube-proxy running as pods (`lab up --proxy=pod`) there is no
    unix socket on this side of the lab network, which only its namespaces reach:
    this same command runs again inside the node's namespace, aimed at the node's
    address (its output relayed). None when that is not the case."""
    found = _lab_node(args)
    if found is None:
        return None
    lab, node_ip = found
    if lab.state is None or lab.state.proxy_mode != "pod":
        return None
    argv = [sys.executable, "-m", "kubeling.cli.main", "proxy", args.action, args.node]
    argv += [*([args.target] if args.action == "explain" else []), "--proxy"]
    argv.append(f"{node_ip}:{DEFAULT_PORT}")
    child = await asyncio.create_subprocess_exec(
        *lab.exec_command(args.node, argv),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await child.communicate()
    for line in out.decode(errors="replace").splitlines():
        ctx.out(line)
    for line in err.decode(errors="replace").splitlines():
        ctx.err(line)
    return child.returncode or 0


async def _proxy_address(args: argparse.Namespace, ctx: Context) -> str:
    if args.proxy:
        return str(args.proxy)
    # A lab node's proxy process also listens on a unix socket: the lab network is
    # not reachable from outside its namespaces.
    found = _lab_node(args)
    if found is not None:
        return f"unix:{found[0].proxy_socket(args.node)}"
    async with ctx.client() as api:
        node = await api.nodes.get(args.node)
    for address in node.status.addresses:
        if address.type == "InternalIP":
            return f"{address.address}:{DEFAULT_PORT}"
    raise CliError(f'error: node "{args.node}" has no InternalIP; give --proxy ADDRESS')


def _credentials(args: argparse.Namespace, ctx: Context) -> Credentials | None:
    """The CLI's credentials, checking the proxy's certificate for the node's name
    (a SAN of every node's and proxy's certificate): the address may be an IP or a
    lab node's unix socket. None (plaintext) when the CLI has none."""
    credentials = ctx.target.credentials
    return credentials.with_server_name(args.node) if credentials is not None else None


async def _call(
    address: str,
    method: str,
    request: Message,
    response: type[Message],
    credentials: Credentials | None = None,
) -> Message:
    async with rpc.channel(address, credentials=credentials) as channel:
        call = channel.unary_unary(
            _SERVICE + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString,
        )
        try:
            reply: Message = await call(request, timeout=30)
            return reply
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise CliError(
                    f"error: cannot reach the proxy at {address}: {exc.details()}"
                ) from None
            raise


async def run_explain(args: argparse.Namespace, ctx: Context) -> int:
    host, port, protocol = parse_target(args.target)
    relayed = await _in_lab_namespace(args, ctx)
    if relayed is not None:
        return relayed
    address = await _proxy_address(args, ctx)
    request = proxy_pb2.ExplainRequest(address=host, port=port, protocol=protocol)
    reply = await _call(
        address, "Explain", request, proxy_pb2.ExplainResponse, _credentials(args, ctx)
    )
    assert isinstance(reply, proxy_pb2.ExplainResponse)
    target = f"{host}:{port}/{protocol}"
    if reply.verdict == "none":
        ctx.out(f"{target}: no service; the proxy leaves this traffic alone")
        return 0
    if reply.verdict == "no-endpoints":
        ctx.out(f"{target}: a service with no ready endpoints; new connections are rejected")
    else:
        kinds = {"cluster-ip": "ClusterIP", "external-ip": "external IP"}
        kind = kinds.get(reply.verdict, "NodePort")
        ctx.out(f"{target}: {kind} of service {reply.service} (chain {reply.chain})")
        ctx.out(f"  endpoints ({len(reply.endpoints)}, one picked at random per connection):")
        for ep in reply.endpoints:
            ctx.out(f"    {ep.address}:{ep.port}")
        if reply.session_affinity:
            ctx.out("  session affinity: ClientIP (a client stays on its endpoint)")
        if reply.masquerade:
            ctx.out("  source address: masqueraded")
    ctx.out("  rules:")
    for rule in reply.rules:
        ctx.out(f"    {rule}")
    return 0


async def run_status(args: argparse.Namespace, ctx: Context) -> int:
    relayed = await _in_lab_namespace(args, ctx)
    if relayed is not None:
        return relayed
    address = await _proxy_address(args, ctx)
    reply = await _call(
        address,
        "Status",
        proxy_pb2.ProxyStatusRequest(),
        proxy_pb2.ProxyStatus,
        _credentials(args, ctx),
    )
    assert isinstance(reply, proxy_pb2.ProxyStatus)
    last = reply.last_sync_time.ToDatetime().isoformat() if reply.syncs else "never"
    ctx.out(f"node:            {reply.node_name}")
    ctx.out(f"mode:            {reply.mode} (table {reply.table})")
    ctx.out(f"healthy:         {'yes' if reply.healthy else 'no'}")
    ctx.out(
        f"last sync:       {last} ({'full' if reply.last_sync_full else 'partial'}, "
        f"{reply.last_sync_seconds * 1000:.1f} ms)"
    )
    ctx.out(f"syncs:           {reply.syncs} ({reply.sync_failures} failed)")
    if reply.last_error:
        ctx.out(f"last error:      {reply.last_error}")
    ctx.out(f"service ports:   {reply.services}")
    ctx.out(f"endpoints:       {reply.endpoints}")
    ctx.out(f"chains / rules:  {reply.chains} / {reply.rules}")
    ctx.out(f"pending changes: {reply.pending_changes}")
    return 0
