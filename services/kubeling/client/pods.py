"""Pod logs and exec through the master (which forwards them to the pod's kubelet).

async with Client("localhost:6443") as api:
    async for text in pod_logs(api, "web", follow=True):
        print(text, end="")
    result = await pod_exec(api, "web", ["cat", "/etc/hostname"])
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

from google.protobuf.message import Message

from kubeling.api import kinds
from kubeling.client.client import Client
from kubeling.v1 import core_pb2

__all__ = ["pod_bind", "pod_exec", "pod_logs"]

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


async def pod_bind(
    client: Client, name: str, node_name: str, namespace: str = "default", uid: str = ""
) -> core_pb2.Pod:
    """Assign a pending pod to a node (what the scheduler does); fails with
    FAILED_PRECONDITION when the pod is already bound."""
    bind_call = client.channel.unary_unary(
        _BASE + "Bind",
        request_serializer=_serialize,
        response_deserializer=core_pb2.Pod.FromString,
    )
    request = core_pb2.BindRequest(namespace=namespace, name=name, node_name=node_name, uid=uid)
    pod: core_pb2.Pod = await bind_call(request, timeout=30)
    return pod
