"""`kubeling port-forward pod/NAME|svc/NAME|deploy/NAME [LOCAL:]REMOTE ...`: listen on
local ports (127.0.0.1 unless --address says otherwise) and carry each accepted
connection to the pod's port over its own Pods/PortForward stream.

A Service picks one ready pod of its selector and maps the service port to its
targetPort (a named one through the pod's container ports), as kubectl does. A
connection ends when either side ends: the pod's end closes the local socket, the
local end ends the stream. Forwarding ends, with "lost connection to pod" and
status 1, when the pod is deleted or replaced by another of its name (kubectl does
the same), rather than failing every later connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools

import grpc

from kubeling.api.kinds import POD, SERVICE
from kubeling.cli.commands.base import SubParsers, add_command
from kubeling.cli.commands.logs import kubelet_error
from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.cli.options import namespace_for
from kubeling.cli.podselect import pick_pod, split_reference
from kubeling.client import Client
from kubeling.client.pods import open_port_forward
from kubeling.v1 import core_pb2

_READ = 32 * 1024


def register(subparsers: SubParsers) -> None:
    parser = add_command(subparsers, "port-forward", run, "Forward local ports to a pod's ports.")
    parser.add_argument("target", metavar="TYPE/NAME", help="pod/NAME, svc/NAME, deploy/NAME, ...")
    parser.add_argument("ports", nargs="+", metavar="[LOCAL:]REMOTE")
    parser.add_argument("-n", "--namespace", default=None, help="the namespace (default: default)")
    parser.add_argument(
        "--address",
        default="127.0.0.1",
        help="comma-separated local addresses to listen on (default 127.0.0.1)",
    )


def parse_port(text: str) -> tuple[int, str]:
    """(local port, remote port text) of "[LOCAL:]REMOTE"; local 0 means any."""
    local, colon, remote = text.rpartition(":")
    if not colon:
        local, remote = remote, remote
    try:
        local_port = int(local) if local else 0
    except ValueError:
        raise CliError(f"error: invalid port {text!r}: LOCAL must be a number") from None
    if not 0 <= local_port < 65536 or not remote:
        raise CliError(f"error: invalid port {text!r}")
    return local_port, remote


def _container_port(pod: core_pb2.Pod, name: str) -> int:
    for container in pod.spec.containers:
        for port in container.ports:
            if port.name == name:
                return int(port.container_port)
    raise CliError(f'error: pod "{pod.metadata.name}" has no container port named "{name}"')


async def remote_port(api: Client, target: str, remote: str, pod: core_pb2.Pod, ns: str) -> int:
    """The pod port REMOTE means: a number or a named container port; for a Service
    the service port (number or name), mapped to its targetPort."""
    kind, name = split_reference(target)
    if kind is SERVICE:
        service: core_pb2.Service = await api.services.get(name, ns)
        for port in service.spec.ports:
            if str(port.port) == remote or (port.name and port.name == remote):
                which = port.target_port.WhichOneof("kind")
                if which == "string_value":
                    return _container_port(pod, port.target_port.string_value)
                if which == "number_value" and port.target_port.number_value:
                    return int(port.target_port.number_value)
                return int(port.port)
        raise CliError(f'error: service "{name}" does not have a service port {remote}')
    if remote.isdigit():
        value = int(remote)
        if not 0 < value < 65536:
            raise CliError(f"error: invalid port {remote}")
        return value
    return _container_port(pod, remote)


async def _relay(
    api: Client,
    pod: str,
    namespace: str,
    port: int,
    ctx: Context,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    call = None
    try:
        call = await open_port_forward(api, pod, port, namespace)
        await call.initial_metadata()  # write only once the session is open

        async def upstream() -> None:
            while data := await reader.read(_READ):
                await call.write(core_pb2.PortForwardRequest(data=data))
            await call.done_writing()

        pump = asyncio.create_task(upstream())
        try:
            async for message in call:
                if message.WhichOneof("kind") == "data":
                    writer.write(message.data)
                    await writer.drain()
                else:
                    ctx.err(f"error forwarding port {port} to pod {pod}: {message.error}")
                    break
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
    except grpc.aio.AioRpcError as exc:
        ctx.err(f"error forwarding port {port} to pod {pod}: {exc.details()}")
    except (ConnectionError, OSError):
        pass  # the local side went away
    except asyncio.CancelledError:
        # Ctrl-C with the connection open: asyncio.run cancels this handler. Ending
        # normally (the connection is closed below) keeps asyncio's stream callback
        # from reporting the cancelled task with a traceback (Python 3.11).
        pass
    finally:
        if call is not None:
            call.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def until_gone(api: Client, pod: core_pb2.Pod) -> None:
    """Returns once the pod is deleted or another pod has its name (a new uid)."""
    name, namespace, uid = pod.metadata.name, pod.metadata.namespace, pod.metadata.uid
    while True:
        try:
            async for event in api.pods.watch(namespace, field_selector=f"metadata.name={name}"):
                if event.type == "DELETED" or (
                    event.type in ("ADDED", "MODIFIED") and event.object.metadata.uid != uid
                ):
                    return
        except grpc.aio.AioRpcError:
            pass  # the master went away for a moment: watch again (the list says)
        await asyncio.sleep(1)


async def run(args: argparse.Namespace, ctx: Context) -> int:
    namespace = namespace_for(POD, args)
    mappings = [parse_port(text) for text in args.ports]
    addresses = [a.strip() for a in args.address.split(",") if a.strip()]
    async with ctx.client() as api:
        try:
            pod = await pick_pod(api, args.target, namespace)
            remotes = [await remote_port(api, args.target, r, pod, namespace) for _, r in mappings]
        except grpc.aio.AioRpcError as exc:
            raise kubelet_error(exc) or exc from None
        name = pod.metadata.name
        servers = []
        try:
            for (local, _), remote in zip(mappings, remotes, strict=True):
                bound = local
                for address in addresses:
                    handler = functools.partial(_relay, api, name, namespace, remote, ctx)
                    try:
                        server = await asyncio.start_server(handler, address, bound)
                    except OSError as exc:
                        raise CliError(
                            f"error: unable to listen on {address}:{bound}: {exc}"
                        ) from None
                    servers.append(server)
                    # With LOCAL 0 every address gets the port the first one got.
                    bound = server.sockets[0].getsockname()[1]
                    shown = f"[{address}]" if ":" in address else address
                    ctx.out(f"Forwarding from {shown}:{bound} -> {remote}")
            await until_gone(api, pod)  # or Ctrl-C
            raise CliError(f"error: lost connection to pod {name}: it was deleted")
        except asyncio.CancelledError:
            return 0  # Ctrl-C (asyncio.run cancels us) is how forwarding ends
        finally:
            for server in servers:
                server.close()
    return 0
