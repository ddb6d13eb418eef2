"""The kubelet's own API (kubeling.v1.Kubelet, port 10250): pods, logs, exec, stats,
and the interactive sessions (ExecStream, Attach, PortForward).

A session is a bidirectional gRPC stream whose first message names the pod; the
kubelet asks CRI for a streaming URL (Exec/Attach/PortForward) and speaks
websocket v4.channel.k8s.io to the runtime's streaming server (cri/streaming.py),
dialled in `stream_netns` when the runtime lives in another network namespace.
One message is in flight each way, and when either side ends both do.

It knows pods only through a `PodDirectory` and containers only through the CRI
`Runtime`, so it can be served by the real kubelet or, in tests, over a fake.
Errors read like the ones kubectl shows for the same mistakes.

Served over TLS from the node's credential directory (its node certificate, which
the master checks, and the cluster CA, which callers' certificates must come
from), it answers only the master's own client identity (`kubeling:master` in
`system:masters`): Exec and Logs reach every container of the node, so not even
an admin calls the kubelet directly, as with Kubernetes' kubelet authorizing only
the API server. Everyone else gets PERMISSION_DENIED naming them. Without TLS
(`--insecure`, loopback only) every caller is the local admin.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf.message import Message

from kubeling.api.errors import ApiError
from kubeling.common import handlers, identity, rpc
from kubeling.common.handlers import Context
from kubeling.common.tls import CredentialDir
from kubeling.cri import streaming
from kubeling.cri.api import pb
from kubeling.cri.errors import CRIError
from kubeling.cri.runtime import Runtime
from kubeling.kubelet import labels as pod_labels
from kubeling.kubelet.directory import ContainerRef, PodDirectory
from kubeling.kubelet.logs import LogOptions, read_log
from kubeling.v1 import core_pb2, kubelet_pb2

__all__ = [
    "DEFAULT_PORT",
    "MAX_EXEC_TIMEOUT",
    "SERVICE_NAME",
    "KubeletService",
    "serve_kubelet_api",
]

log = structlog.get_logger(__name__)

SERVICE_NAME: str = kubelet_pb2.DESCRIPTOR.services_by_name["Kubelet"].full_name
DEFAULT_PORT = 10250
# Seconds an Exec may run: its timeoutSeconds when smaller, else this.
MAX_EXEC_TIMEOUT = 600
_CODE = grpc.StatusCode


def _runtime_error(exc: CRIError, doing: str) -> ApiError:
    # The runtime's code says what went wrong (NOT_FOUND, DEADLINE_EXCEEDED, ...).
    return ApiError(exc.code, f"{doing}: {exc.details}")


def master_only(caller: identity.Identity, method: str) -> None:
    """PERMISSION_DENIED unless `caller` is the master's client identity."""
    if caller.user == identity.MASTER_USER and identity.GROUP_MASTERS in caller.groups:
        return
    raise ApiError(
        _CODE.PERMISSION_DENIED,
        f"{caller} may not call kubeling.v1.Kubelet/{method}: the kubelet API answers "
        f"only the master ({identity.MASTER_USER}); go through the master "
        "(kubeling logs, kubeling exec)",
    )


class KubeletService:
    """Serves `directory` and `runtime` as kubeling.v1.Kubelet. With
    `authenticated` (TLS with client certificates) only the master may call."""

    service_name = SERVICE_NAME

    def __init__(
        self,
        directory: PodDirectory,
        runtime: Runtime,
        poll_interval: float = 0.15,
        authenticated: bool = False,
        stream_netns: str = "",
    ) -> None:
        """`stream_netns`: path of the network namespace the runtime's streaming
        server listens in, when not this process's own (a test's containerd)."""
        self.directory = directory
        self.runtime = runtime
        self.poll_interval = poll_interval
        self.authenticated = authenticated
        self.stream_netns = stream_netns

    def _check(self, context: Context, method: str) -> None:
        if self.authenticated:
            master_only(identity.identity_of(context), method)

    def _unary(
        self,
        method: str,
        fn: Callable[[Any, Context], Awaitable[Any]],
        request: type[Message],
    ) -> grpc.RpcMethodHandler:
        return handlers.unary(fn, request, "kubelet", lambda context: self._check(context, method))

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "ListPods": self._unary(
                    "ListPods", self.list_pods, kubelet_pb2.KubeletListPodsRequest
                ),
                "Exec": self._unary("Exec", self.exec, core_pb2.PodExecRequest),
                "Stats": self._unary("Stats", self.stats, kubelet_pb2.StatsRequest),
                "Logs": grpc.unary_stream_rpc_method_handler(
                    self.logs,
                    request_deserializer=handlers.parser(core_pb2.PodLogsRequest),
                    response_serializer=handlers.serialize,
                ),
                "ExecStream": grpc.stream_stream_rpc_method_handler(
                    self.exec_stream,
                    request_deserializer=handlers.parser(core_pb2.ExecStreamRequest),
                    response_serializer=handlers.serialize,
                ),
                "Attach": grpc.stream_stream_rpc_method_handler(
                    self.attach,
                    request_deserializer=handlers.parser(core_pb2.ExecStreamRequest),
                    response_serializer=handlers.serialize,
                ),
                "PortForward": grpc.stream_stream_rpc_method_handler(
                    self.port_forward,
                    request_deserializer=handlers.parser(core_pb2.PortForwardRequest),
                    response_serializer=handlers.serialize,
                ),
            },
        )

    # -- lookups ---------------------------------------------------------------

    def _container(
        self, namespace: str, name: str, container: str, previous: bool = False
    ) -> tuple[str, ContainerRef]:
        """The container's name and instance, or the error kubectl would show."""
        pod = self.directory.find_pod(namespace, name)
        if pod is None:
            raise ApiError(_CODE.NOT_FOUND, f'pods "{name}" not found')
        names = [c.name for c in pod.spec.containers]
        if not container:
            if len(names) != 1:
                raise ApiError(
                    _CODE.INVALID_ARGUMENT,
                    f"a container name must be specified for pod {name}, "
                    f"choose one of: [{' '.join(names)}]",
                )
            container = names[0]
        elif container not in names and container not in {c.name for c in pod.spec.init_containers}:
            raise ApiError(_CODE.NOT_FOUND, f'container "{container}" not found in pod "{name}"')
        ref = self.directory.find_container(namespace, name, container, previous)
        if ref is not None:
            return container, ref
        if previous:
            raise ApiError(
                _CODE.NOT_FOUND,
                f'previous terminated container "{container}" in pod "{name}" not found',
            )
        reason = _waiting_reason(pod, container)
        raise ApiError(
            _CODE.FAILED_PRECONDITION,
            f'container "{container}" in pod "{name}" is waiting to start'
            + (f": {reason}" if reason else ""),
        )

    # -- methods ---------------------------------------------------------------

    async def list_pods(
        self, request: kubelet_pb2.KubeletListPodsRequest, context: Context
    ) -> core_pb2.PodList:
        return core_pb2.PodList(items=self.directory.pods())

    async def logs(
        self, request: core_pb2.PodLogsRequest | handlers.Malformed, context: Context
    ) -> AsyncIterator[core_pb2.LogChunk]:
        try:
            self._check(context, "Logs")
            if isinstance(request, handlers.Malformed):
                raise request.to_error()
            if request.HasField("tail_lines") and request.tail_lines < 0:
                raise ApiError(_CODE.INVALID_ARGUMENT, "tailLines: must be 0 or more")
            if request.HasField("since_seconds") and request.since_seconds < 1:
                raise ApiError(_CODE.INVALID_ARGUMENT, "sinceSeconds: must be greater than 0")
            namespace = request.namespace or "default"
            container, ref = self._container(
                namespace, request.name, request.container, request.previous
            )
        except ApiError as exc:
            await context.abort_with_status(exc.to_status())
            return
        options = LogOptions(
            tail_lines=request.tail_lines if request.HasField("tail_lines") else None,
            since_seconds=request.since_seconds if request.HasField("since_seconds") else None,
            timestamps=request.timestamps,
            follow=request.follow,
            poll_interval=self.poll_interval,
        )

        def running() -> bool:
            # Following ends when this instance stops (a restart starts a new log).
            now = self.directory.find_container(namespace, request.name, container)
            return now is not None and now.container_id == ref.container_id and now.running

        try:
            async for text in read_log(ref.log_path, options, running):
                yield core_pb2.LogChunk(text=text)
        except OSError as exc:
            log.warning("cannot read container log", path=ref.log_path, error=str(exc))
            await context.abort(_CODE.INTERNAL, f"cannot read the log of {container}: {exc}")

    async def exec(
        self, request: core_pb2.PodExecRequest, context: Context
    ) -> core_pb2.ExecResponse:
        if not request.command:
            raise ApiError(
                _CODE.INVALID_ARGUMENT, "you must specify at least one command for the container"
            )
        if request.timeout_seconds < 0:
            raise ApiError(_CODE.INVALID_ARGUMENT, "timeoutSeconds: must be 0 or more")
        namespace = request.namespace or "default"
        container, ref = self._container(namespace, request.name, request.container)
        not_running = ApiError(
            _CODE.FAILED_PRECONDITION,
            f'unable to exec in container "{container}" of pod "{request.name}": '
            "container is not running",
        )
        if not ref.running:
            raise not_running
        # No timeout, or a longer one, is the cap: an exec never holds a runtime call
        # (and the master's forwarded call) open for good.
        timeout = min(request.timeout_seconds or MAX_EXEC_TIMEOUT, MAX_EXEC_TIMEOUT)
        try:
            result = await self.runtime.exec_sync(ref.container_id, list(request.command), timeout)
        except CRIError as exc:
            if exc.code == _CODE.DEADLINE_EXCEEDED:
                raise ApiError(exc.code, f"command timed out after {timeout}s") from None
            if exc.code in (_CODE.NOT_FOUND, _CODE.UNKNOWN):
                # The container stopped (or went away) between the lookup and the exec.
                raise not_running from None
            raise _runtime_error(exc, "exec failed") from None
        return core_pb2.ExecResponse(
            stdout=result.stdout.decode("utf-8", "replace"),
            stderr=result.stderr.decode("utf-8", "replace"),
            exit_code=result.exit_code,
        )

    # -- streaming sessions (CRI Exec/Attach/PortForward URLs) -------------------

    async def exec_stream(
        self, requests: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[core_pb2.ExecStreamResponse]:
        async for response in self._session("ExecStream", requests, context):
            yield response

    async def attach(
        self, requests: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[core_pb2.ExecStreamResponse]:
        async for response in self._session("Attach", requests, context):
            yield response

    async def _open_session(
        self, method: str, start: core_pb2.ExecStreamRequest.Start
    ) -> streaming.WebSocket:
        if method == "ExecStream" and not start.command:
            raise ApiError(
                _CODE.INVALID_ARGUMENT, "you must specify at least one command for the container"
            )
        namespace = start.namespace or "default"
        container, ref = self._container(namespace, start.name, start.container)
        doing = "exec in" if method == "ExecStream" else "attach to"
        if not ref.running:
            raise ApiError(
                _CODE.FAILED_PRECONDITION,
                f'unable to {doing} container "{container}" of pod "{start.name}": '
                "container is not running",
            )
        try:
            if method == "ExecStream":
                url = await self.runtime.exec(
                    ref.container_id, list(start.command), tty=start.tty, stdin=start.stdin
                )
            else:
                url = await self.runtime.attach(ref.container_id, tty=start.tty, stdin=start.stdin)
        except CRIError as exc:
            raise _runtime_error(exc, f"unable to {doing} the container") from None
        return await self._connect(url, doing)

    async def _connect(self, url: str, doing: str) -> streaming.WebSocket:
        try:
            return await streaming.connect(url, netns=self.stream_netns or None)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            raise ApiError(
                _CODE.UNAVAILABLE,
                f"unable to {doing} the container: cannot reach the runtime's streaming "
                f"server: {exc}",
            ) from None
        except (streaming.StreamingError, ValueError) as exc:
            raise ApiError(_CODE.INTERNAL, f"unable to {doing} the container: {exc}") from None

    async def _session(
        self, method: str, requests: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[core_pb2.ExecStreamResponse]:
        try:
            self._check(context, method)
            start = (await handlers.start_message(requests)).start
            ws = await self._open_session(method, start)
        except ApiError as exc:
            await context.abort_with_status(exc.to_status())
            return
        # The latest size asked for (the pump updates it), resent once below.
        size = [b""]
        if start.tty and start.size.width and start.size.height:
            size[0] = streaming.resize_message(start.size.width, start.size.height)
            await ws.send_channel(streaming.RESIZE, size[0])
        resend = start.tty
        # Headers now: the caller learns the session is open (and only then writes).
        await context.send_initial_metadata(())
        pump = asyncio.create_task(_pump_input(requests, ws, start.stdin, size))
        exit_code, message = 0, ""
        ended_with_status = False
        try:
            while True:
                got = await ws.receive_channel()
                if got is None:
                    break
                channel, data = got
                if channel == streaming.STDOUT and data:
                    if resend and size[0]:
                        # containerd may drop a resize sent before the process had
                        # its tty; once it writes, the tty exists: send it again.
                        await ws.send_channel(streaming.RESIZE, size[0])
                    resend = False
                    yield core_pb2.ExecStreamResponse(stdout=data)
                elif channel == streaming.STDERR and data:
                    yield core_pb2.ExecStreamResponse(stderr=data)
                elif channel == streaming.ERROR and data:
                    exit_code, message = streaming.exit_status(data)
                    ended_with_status = True
            if not ended_with_status and method == "ExecStream":
                exit_code, message = 1, "the runtime's streaming server closed without a status"
            yield core_pb2.ExecStreamResponse(
                exit=core_pb2.ExecExit(exit_code=exit_code, message=message)
            )
        except streaming.StreamingError as exc:
            await context.abort(_CODE.INTERNAL, f"streaming session failed: {exc}")
        finally:
            # The caller went away or the process ended: both directions stop.
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            await ws.close()

    async def port_forward(
        self, requests: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[core_pb2.PortForwardResponse]:
        try:
            self._check(context, "PortForward")
            start = (await handlers.start_message(requests)).start
            if not 0 < start.port < 65536:
                raise ApiError(_CODE.INVALID_ARGUMENT, "start.port: must be 1-65535")
            namespace = start.namespace or "default"
            if self.directory.find_pod(namespace, start.name) is None:
                raise ApiError(_CODE.NOT_FOUND, f'pods "{start.name}" not found')
            sandbox = await self._sandbox(namespace, start.name)
            try:
                url = await self.runtime.port_forward(sandbox, start.port)
            except CRIError as exc:
                raise _runtime_error(exc, "unable to forward the port") from None
            separator = "&" if "?" in url else "?"
            ws = await self._connect(f"{url}{separator}port={start.port}", "forward a port of")
        except ApiError as exc:
            await context.abort_with_status(exc.to_status())
            return
        await context.send_initial_metadata(())  # the session is open
        pump = asyncio.create_task(_pump_forwarded(requests, ws))
        # The first message on each channel names the port: not data.
        port_seen = {0: False, 1: False}
        try:
            while True:
                got = await ws.receive_channel()
                if got is None:
                    break
                channel, data = got
                if channel in port_seen and not port_seen[channel]:
                    port_seen[channel] = True
                    continue
                if channel == 0 and data:
                    yield core_pb2.PortForwardResponse(data=data)
                elif channel == 1 and data:
                    yield core_pb2.PortForwardResponse(error=data.decode("utf-8", "replace"))
                    break
        except streaming.StreamingError as exc:
            await context.abort(_CODE.INTERNAL, f"port-forward session failed: {exc}")
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            await ws.close()

    async def _sandbox(self, namespace: str, name: str) -> str:
        try:
            found = await self.runtime.list_pod_sandbox(
                state=pb.SANDBOX_READY,
                labels={pod_labels.POD_NAMESPACE: namespace, pod_labels.POD_NAME: name},
            )
        except CRIError as exc:
            raise _runtime_error(exc, "cannot list pod sandboxes") from None
        if not found:
            raise ApiError(
                _CODE.FAILED_PRECONDITION, f'pod "{name}" has no running sandbox on this node'
            )
        # The newest sandbox is the pod's current one.
        return str(max(found, key=lambda s: s.created_at).id)

    async def stats(
        self, request: kubelet_pb2.StatsRequest, context: Context
    ) -> kubelet_pb2.StatsResponse:
        selector: dict[str, str] = {}
        if request.namespace:
            selector[pod_labels.POD_NAMESPACE] = request.namespace
            if request.name:
                selector[pod_labels.POD_NAME] = request.name
        try:
            found = await self.runtime.list_container_stats(labels=selector or None)
        except CRIError as exc:
            raise _runtime_error(exc, "cannot list container stats") from None
        # Only pods this node runs: leftovers of deleted pods are not reported.
        pods = {(p.metadata.namespace, p.metadata.name) for p in self.directory.pods()}
        entries = []
        for stats in found:
            labels = stats.attributes.labels
            namespace = labels.get(pod_labels.POD_NAMESPACE, "")
            pod = labels.get(pod_labels.POD_NAME, "")
            if (namespace, pod) not in pods:
                continue
            timestamp = stats.cpu.timestamp or stats.memory.timestamp
            if not timestamp:
                continue  # a stopped container: no usage to report
            entry = kubelet_pb2.ContainerStatsEntry(
                namespace=namespace,
                pod=pod,
                container=labels.get(pod_labels.CONTAINER_NAME) or stats.attributes.metadata.name,
                container_id=stats.attributes.id,
                cpu_usage_core_nano_seconds=stats.cpu.usage_core_nano_seconds.value,
                memory_working_set_bytes=stats.memory.working_set_bytes.value,
                cpu_usage_nano_cores=stats.cpu.usage_nano_cores.value,
            )
            entry.timestamp.FromNanoseconds(timestamp)
            entries.append(entry)
        entries.sort(key=lambda e: (e.namespace, e.pod, e.container))
        return kubelet_pb2.StatsResponse(node_name=self.directory.node_name, containers=entries)


async def _pump_input(
    requests: AsyncIterator[Any], ws: streaming.WebSocket, stdin: bool, size: list[bytes]
) -> None:
    """Caller -> runtime: stdin and resizes, one message at a time (the gRPC
    stream is only read as fast as the websocket takes it); `size[0]` keeps the
    latest resize."""
    async for request in requests:
        if isinstance(request, handlers.Malformed):
            continue
        kind = request.WhichOneof("kind")
        if kind == "stdin" and stdin:
            await ws.send_channel(streaming.STDIN, request.stdin)
        elif kind == "resize":
            size[0] = streaming.resize_message(request.resize.width, request.resize.height)
            await ws.send_channel(streaming.RESIZE, size[0])
        # stdin_close: v4.channel.k8s.io cannot half-close stdin (see cri/streaming.py).


async def _pump_forwarded(requests: AsyncIterator[Any], ws: streaming.WebSocket) -> None:
    """Caller -> pod: bytes of the forwarded connection; its end closes the session."""
    async for request in requests:
        if not isinstance(request, handlers.Malformed) and request.WhichOneof("kind") == "data":
            await ws.send_channel(0, request.data)
    await ws.close()


def _waiting_reason(pod: core_pb2.Pod, container: str) -> str:
    for status in [*pod.status.container_statuses, *pod.status.init_container_statuses]:
        if status.name == container:
            return str(status.state.waiting.reason)
    return ""


def kubelet_server(
    listen: str, service: KubeletService, credentials: CredentialDir | None
) -> rpc.Server:
    """The kubelet API's server: TLS from `credentials` (re-read after renewal),
    callers need a certificate from its CA, and only the master is answered;
    without credentials plaintext, which rpc.Server allows on loopback only."""
    service.authenticated = credentials is not None
    tls = rpc.ServerTls(credentials) if credentials is not None else None
    return rpc.Server(listen, [service.handler()], [SERVICE_NAME], tls=tls)


async def serve_kubelet_api(
    listen: str,
    directory: PodDirectory,
    runtime: Runtime,
    poll_interval: float = 0.15,
    credentials: CredentialDir | None = None,
) -> rpc.Server:
    """Start serving the kubelet API on `listen` ("0.0.0.0:10250", "127.0.0.1:0");
    the caller stops the returned server. Its `port` is the one actually bound."""
    service = KubeletService(directory, runtime, poll_interval)
    server = kubelet_server(listen, service, credentials)
    await server.start()
    return server
