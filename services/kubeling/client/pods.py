"""Pod logs and exec through the master (which forwards them to the pod's kubelet).

async with Client("localhost:6443") as api:
    async for text in pod_logs(api, "web", follow=True):
        print(text, end="")
    result = await pod_exec(api, "web", ["cat", "/etc/hostname"])
    session = await open_exec(api, "web", ["sh"], stdin=True, tty=True)
    await session.write(core_pb2.ExecStreamRequest(stdin=b"exit 3\n"))
    async for message in session: ...   # stdout/stderr, then exit

Sessions (ExecStream, Attach, PortForward) are gRPC bidirectional streams whose
first message, written here, is `start`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any

from google.protobuf.message import Message

from kubeling.api import kinds
from kubeling.client.client import Client
from kubeling.v1 import core_pb2

__all__ = [
    "open_attach",
    "open_exec",
    "open_port_forward",
    "pod_bind",
    "pod_exec",
    "pod_logs",
    "pod_top",
]

_BASE = f"/{kinds.POD.service}/"
# An exec with a time limit gets this much longer for the round trips around it.
_EXEC_MARGIN = 10.0


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


async def pod_logs(
    client: Client,
    name: str,
    namespace: str = "default",
    container: str = "",
    follow: bool = False,
    tail_lines: int | None = None,
    since_seconds: int | None = None,
    timestamps: bool = False,
    previous: bool = False,
) -> AsyncGenerator[str, None]:
    """The pod's log as text chunks (whole lines); with follow, until the container
    stops or the caller stops iterating. Errors raise grpc.aio.AioRpcError."""
    request = core_pb2.PodLogsRequest(
        namespace=namespace,
        name=name,
        container=container,
        follow=follow,
        timestamps=timestamps,
        previous=previous,
    )
    if tail_lines is not None:
        request.tail_lines = tail_lines
    if since_seconds is not None:
        request.since_seconds = since_seconds
    logs = client.channel.unary_stream(
        _BASE + "Logs",
        request_serializer=_serialize,
        response_deserializer=core_pb2.LogChunk.FromString,
    )
    # No deadline: a followed log may stream for as long as the pod runs.
    call = logs(request)
    try:
        async for chunk in call:
            yield chunk.text
    finally:
        call.cancel()


async def pod_exec(
    client: Client,
    name: str,
    command: Sequence[str],
    namespace: str = "default",
    container: str = "",
    timeout_seconds: int = 0,
) -> core_pb2.ExecResponse:
    """Run `command` in the pod's container and wait for it; a non-zero exit code is
    a result, not an error."""
    request = core_pb2.PodExecRequest(
        namespace=namespace,
        name=name,
        container=container,
        command=list(command),
        timeout_seconds=timeout_seconds,
    )
    exec_call = client.channel.unary_unary(
        _BASE + "Exec",
        request_serializer=_serialize,
        response_deserializer=core_pb2.ExecResponse.FromString,
    )
    deadline = timeout_seconds + _EXEC_MARGIN if timeout_seconds > 0 else None
    response: core_pb2.ExecResponse = await exec_call(request, timeout=deadline)
    return response


class Binder:
    """Binds pending pods to nodes (what the scheduler does) with the Bind call
    made once per channel (the client may swap its channel when its credentials
    change). The reply, the bound pod, comes back as the master encoded it: a
    scheduler learns bindings from its pod watch and need not parse it."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._channel: Any = None
        self._call: Any = None

    async def bind(
        self, name: str, node_name: str, namespace: str = "default", uid: str = ""
    ) -> bytes:
        """Fails with FAILED_PRECONDITION when the pod is already bound."""
        channel = self._client.channel
        if self._channel is not channel:
            self._channel = channel
            self._call = channel.unary_unary(
                _BASE + "Bind", request_serializer=_serialize, response_deserializer=None
            )
        request = core_pb2.BindRequest(namespace=namespace, name=name, node_name=node_name, uid=uid)
        reply: bytes = await self._call(request, timeout=30)
        return reply


async def pod_bind(
    client: Client, name: str, node_name: str, namespace: str = "default", uid: str = ""
) -> core_pb2.Pod:
    """Assign a pending pod to a node; fails with FAILED_PRECONDITION when the pod
    is already bound."""
    return core_pb2.Pod.FromString(await Binder(client).bind(name, node_name, namespace, uid))


async def _open(client: Client, method: str, response: type[Message], first: Message) -> Any:
    call = client.channel.stream_stream(
        _BASE + method, request_serializer=_serialize, response_deserializer=response.FromString
    )()  # no deadline: a session lasts as long as its user
    await call.write(first)
    return call


async def open_exec(
    client: Client,
    name: str,
    command: Sequence[str],
    namespace: str = "default",
    container: str = "",
    stdin: bool = False,
    tty: bool = False,
    size: tuple[int, int] | None = None,
) -> Any:
    """An interactive exec session (a grpc.aio StreamStreamCall): write
    ExecStreamRequest stdin/resize/stdin_close, read ExecStreamResponse until exit."""
    start = core_pb2.ExecStreamRequest.Start(
        namespace=namespace, name=name, container=container, command=list(command),
        stdin=stdin, tty=tty,
    )  # fmt: skip
    if size is not None:
        start.size.width, start.size.height = size
    first = core_pb2.ExecStreamRequest(start=start)
    return await _open(client, "ExecStream", core_pb2.ExecStreamResponse, first)


async def open_attach(
    client: Client,
    name: str,
    namespace: str = "default",
    container: str = "",
    stdin: bool = False,
    tty: bool = False,
    size: tuple[int, int] | None = None,
) -> Any:
    """Attach to the container's running process (as open_exec, without a command)."""
    start = core_pb2.ExecStreamRequest.Start(
        namespace=namespace, name=name, container=container, stdin=stdin, tty=tty
    )
    if size is not None:
        start.size.width, start.size.height = size
    first = core_pb2.ExecStreamRequest(start=start)
    return await _open(client, "Attach", core_pb2.ExecStreamResponse, first)


async def open_port_forward(
    client: Client, name: str, port: int, namespace: str = "default"
) -> Any:
    """One forwarded TCP connection to the pod's `port`: write PortForwardRequest
    data, read PortForwardResponse data (or an error) until the end."""
    start = core_pb2.PortForwardRequest.Start(namespace=namespace, name=name, port=port)
    first = core_pb2.PortForwardRequest(start=start)
    return await _open(client, "PortForward", core_pb2.PortForwardResponse, first)


async def pod_top(
    client: Client, namespace: str = "", name: str = "", label_selector: str = ""
) -> core_pb2.PodTopResponse:
    """CPU (millicores) and memory of running containers, from their kubelets."""
    top = client.channel.unary_unary(
        _BASE + "Top",
        request_serializer=_serialize,
        response_deserializer=core_pb2.PodTopResponse.FromString,
    )
    request = core_pb2.PodTopRequest(namespace=namespace, name=name, label_selector=label_selector)
    response: core_pb2.PodTopResponse = await top(request, timeout=30)
    return response
