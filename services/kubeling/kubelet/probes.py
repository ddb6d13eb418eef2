"""Container probes: running one (exec, httpGet, tcpSocket) and the per-pod workers.

Semantics follow upstream's ``pkg/probe`` and ``pkg/kubelet/prober``:

* an exec probe passes on exit code 0; a timeout is a failure (as since 1.20);
* an httpGet probe (aiohttp) passes on a status in [200, 400); it follows
  redirects on the same host (more than 10 fail) and stops at a redirect to another
  host, which counts as a pass with a warning message; TLS is not verified for
  scheme HTTPS; at most 10 KiB of a body is read;
* a tcpSocket probe passes when the connection opens within the timeout;
* the worker only changes a result after ``successThreshold`` / ``failureThreshold``
  equal results in a row, waits ``initialDelaySeconds`` after the container
  started, holds liveness and readiness until the startup probe passed, and stops
  probing a container whose liveness or startup probe failed until it is replaced.

"unknown" outcomes (the probe could not be run: runtime error, no pod IP yet) are
thrown away, as upstream does with prober errors.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import grpc
import structlog
import yarl
from google.protobuf import struct_pb2

from kubeling.cri.errors import CRIError
from kubeling.cri.runtime import Runtime
from kubeling.v1 import core_pb2

__all__ = [
    "OnChange",
    "ProbeKind",
    "ProbeManager",
    "ProbeOutcome",
    "ProbeResult",
    "ProbeRunner",
    "resolve_port",
    "run_probe",
]

log = structlog.get_logger(__name__)

ProbeResult = Literal["success", "failure", "unknown"]
ProbeKind = Literal["liveness", "readiness", "startup"]
OnChange = Callable[[str, str, ProbeKind, bool], None]

USER_AGENT = "kube-probe/kubeling"  # apps match the "kube-probe/" prefix
_MAX_REDIRECTS = 10
_MAX_BODY = 10 * 1024  # upstream reads at most 10 KiB of a probe's output
_MAX_REASON = 200
_EXEC_GRACE = 1.0  # extra time the runtime gets to report its own exec timeout
_DEFAULT_TIMEOUT = 1
_DEFAULT_PERIOD = 10
_DEFAULT_SUCCESS = 1
_DEFAULT_FAILURE = 3


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    result: ProbeResult
    message: str = ""


def _success(message: str = "") -> ProbeOutcome:
    return ProbeOutcome("success", message)


def _failure(message: str) -> ProbeOutcome:
    return ProbeOutcome("failure", message)


def _unknown(message: str) -> ProbeOutcome:
    return ProbeOutcome("unknown", message)


# -- one probe -----------------------------------------------------------------


class _PortError(ValueError):
    pass


def resolve_port(value: struct_pb2.Value, ports: Sequence[core_pb2.ContainerPort]) -> int:
    """A probe's IntOrString port: a number, or the name of one of the container's ports.

    Raises ValueError with the reason. A name that is not found is tried as a number
    last, as upstream does for an int stored as a string.
    """
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not number.is_integer():
            raise _PortError(f"invalid port number: {number}")
        port = int(number)
    elif kind == "string_value":
        name = value.string_value
        found = next((p.container_port for p in ports if p.name and p.name == name), None)
        if found is None:
            if not name.isdigit():
                raise _PortError(f"port name {name!r} not found")
            found = int(name)
        port = found
    else:
        raise _PortError("probe has no port")
    if not 0 < port < 65536:
        raise _PortError(f"invalid port number: {port}")
    return port


def _hostport(host: str, port: int) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def _text(data: bytes) -> str:
    return data[:_MAX_BODY].decode("utf-8", "replace")


async def run_probe(
    probe: core_pb2.Probe,
    *,
    runtime: Runtime,
    container_id: str,
    pod_ip: str,
    container_ports: Sequence[core_pb2.ContainerPort],
) -> ProbeOutcome:
    """Run ``probe`` once against a container and say how it went."""
    timeout = probe.timeout_seconds if probe.timeout_seconds > 0 else _DEFAULT_TIMEOUT
    if probe.HasField("exec"):
        return await _exec_probe(runtime, container_id, list(probe.exec.command), timeout)
    if probe.HasField("http_get"):
        return await _http_probe(probe.http_get, timeout, pod_ip, container_ports)
    if probe.HasField("tcp_socket"):
        return await _tcp_probe(probe.tcp_socket, timeout, pod_ip, container_ports)
    return _unknown("probe has no handler")


async def _exec_probe(
    runtime: Runtime, container_id: str, cmd: list[str], seconds: int
) -> ProbeOutcome:
    if not container_id:
        return _unknown("no container to exec in")
    shown = " ".join(cmd)
    try:
        # Our own deadline too: a runtime that ignores the timeout must not wedge
        # the worker.
        async with asyncio.timeout(seconds + _EXEC_GRACE):
            result = await runtime.exec_sync(container_id, cmd, seconds)
    except TimeoutError:
        return _failure(f"command {shown!r} timed out")
    except CRIError as exc:
        if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return _failure(f"command {shown!r} timed out")
        # The command could not be run at all (container gone, runtime down):
        # nothing is known about the container's health.
        return _unknown(exc.details)
    output = _text(result.stdout + result.stderr)
    if result.exit_code == 0:
        return _success(output)
    return _failure(f"command {shown!r} exited with {result.exit_code}: {output}".rstrip())


async def _tcp_probe(
    action: core_pb2.TCPSocketAction,
    seconds: int,
    pod_ip: str,
    ports: Sequence[core_pb2.ContainerPort],
) -> ProbeOutcome:
    try:
        port = resolve_port(action.port, ports)
    except _PortError as exc:
        return _failure(str(exc))
    host = action.host or pod_ip
    if not host:
        return _unknown("pod has no IP yet")
    target = _hostport(host, port)
    try:
        async with asyncio.timeout(seconds):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return _failure(f"dial tcp {target}: i/o timeout")
    except OSError as exc:
        return _failure(f"dial tcp {target}: {_reason(exc)}")
    writer.close()
    return _success()


def _reason(exc: Exception) -> str:
    # asyncio's connect errors read "Connect call failed (addr)"; the errno says why.
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


@functools.cache
def _insecure_tls() -> ssl.SSLContext:
    # Probes do not verify certificates (upstream: InsecureSkipVerify), so no CA
    # store is loaded; one shared context is enough.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _TooManyRedirects(Exception):
    pass


async def _http_probe(
    action: core_pb2.HTTPGetAction,
    seconds: int,
    pod_ip: str,
    ports: Sequence[core_pb2.ContainerPort],
) -> ProbeOutcome:
    try:
        port = resolve_port(action.port, ports)
    except _PortError as exc:
        return _failure(str(exc))
    host = action.host or pod_ip
    if not host:
        return _unknown("pod has no IP yet")
    scheme = (action.scheme or "HTTP").lower()
    if scheme not in ("http", "https"):
        return _failure(f"unsupported scheme {action.scheme!r}")
    path = action.path or "/"
    if not path.startswith("/"):
        path = "/" + path
    # Keep reserved characters (query strings are allowed) but escape spaces etc.
    path = quote(path, safe="/?&=%:@!$'()*+,;~-._#")
    for header in action.http_headers:
        name, value = header.name, header.value
        if not name or any(ch in name + value for ch in "\r\n") or ":" in name:
            return _failure(f"invalid HTTP header {name!r}")
    hostport = _hostport(host, port)
    url = f"{scheme}://{hostport}{path}"
    current = url
    try:
        # One deadline for the whole exchange, redirects included (Go's
        # http.Client.Timeout).
        async with asyncio.timeout(seconds), _session(action.http_headers) as session:
            origin = urlsplit(url).hostname
            for _ in range(_MAX_REDIRECTS + 1):
                status, location = await _get_once(session, current)
                if not (300 <= status < 400 and location):
                    break
                target = urljoin(current, location)
                parts = urlsplit(target)
                if parts.scheme not in ("http", "https") or parts.hostname != origin:
                    # Not followed: a 3xx still counts as success, with a warning.
                    return _success(f"Probe terminated redirects, Response status code: {status}")
                current = target
            else:
                raise _TooManyRedirects("stopped after 10 redirects")
    except TimeoutError:
        return _failure(f'Get "{current}": context deadline exceeded (timeout {seconds}s)')
    except aiohttp.ClientConnectorError as exc:
        return _failure(f'Get "{current}": dial tcp {hostport}: connect: {_reason(exc.os_error)}')
    except (aiohttp.ClientError, OSError, _TooManyRedirects, ValueError) as exc:
        # Parser errors quote what the server sent: keep events short.
        reason = _reason(exc)
        if len(reason) > _MAX_REASON:
            reason = reason[:_MAX_REASON] + "..."
        return _failure(f'Get "{current}": {reason}')
    if 200 <= status < 400:
        return _success(f"HTTP probe succeeded with statuscode: {status}")
    return _failure(f"HTTP probe failed with statuscode: {status}")


def _session(headers: Sequence[core_pb2.HTTPHeader]) -> aiohttp.ClientSession:
    """A client for one probe, sending what upstream's prober sends: its own
    User-Agent and Accept unless the probe sets them (an empty value drops one), no
    compression, no proxy, one request per connection."""
    given = {h.name.lower() for h in headers}
    defaults = {"User-Agent": USER_AGENT, "Accept": "*/*"}
    sent: list[tuple[str, str]] = [(n, v) for n, v in defaults.items() if n.lower() not in given]
    sent += [(h.name, h.value) for h in headers if h.value and h.name.lower() != "connection"]
    sent.append(("Connection", "close"))
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, ssl=_insecure_tls()),
        headers=sent,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        auto_decompress=False,
        trust_env=False,
        # The body is read through a window this big, whatever the server sends.
        read_bufsize=_MAX_BODY,
    )


async def _get_once(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    """One GET; returns the status and the Location header. At most _MAX_BODY bytes
    of the body are read (upstream's limit); a server that stalls after the
    headers runs into the probe's deadline, as with upstream's client."""
    async with session.get(yarl.URL(url, encoded=True), allow_redirects=False) as response:
        left = _MAX_BODY
        while left > 0 and (data := await response.content.read(left)):
            left -= len(data)
        # Closing drops the connection and whatever the server still sends.
        response.close()
        return response.status, response.headers.get("Location", "")


# -- the workers ---------------------------------------------------------------


class ProbeRunner(Protocol):
    def __call__(
        self,
        probe: core_pb2.Probe,
        *,
        runtime: Runtime,
        container_id: str,
        pod_ip: str,
        container_ports: Sequence[core_pb2.ContainerPort],
    ) -> Awaitable[ProbeOutcome]: ...


_ProbeField = Literal["startup_probe", "liveness_probe", "readiness_probe"]
_FIELDS: dict[ProbeKind, _ProbeField] = {
    "startup": "startup_probe",
    "liveness": "liveness_probe",
    "readiness": "readiness_probe",
}
# What a result is before the first probe of a new container: upstream's initialValue.
_INITIAL: dict[ProbeKind, bool | None] = {"startup": None, "liveness": True, "readiness": False}


@dataclass(eq=False)
class _Pod:
    uid: str
    ip: str
    containers: dict[str, _Container] = field(default_factory=dict)


@dataclass(eq=False)
class _Container:
    pod: _Pod
    spec: core_pb2.Container
    container_id: str = ""
    started_at: float | None = None
    results: dict[ProbeKind, bool | None] = field(default_factory=lambda: dict(_INITIAL))
    outcomes: dict[ProbeKind, ProbeOutcome] = field(default_factory=dict)
    workers: dict[ProbeKind, _Worker] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return bool(self.container_id) and self.started_at is not None

    @property
    def started(self) -> bool:
        """Startup probe passed (or there is none): liveness and readiness may run."""
        return "startup" not in self.workers or self.results["startup"] is True


@dataclass(eq=False)
class _Worker:
    kind: ProbeKind
    probe: core_pb2.Probe
    container: _Container
    generation: int = 0  # bumped when the container changes: in-flight results are stale
    last: ProbeResult | None = None
    run: int = 0  # how many times in a row ``last`` came back
    on_hold: bool = False
    woken: bool = False
    wake: asyncio.Future[None] | None = None
    task: asyncio.Task[None] | None = None

    @property
    def period(self) -> float:
        return float(self.probe.period_seconds or _DEFAULT_PERIOD)

    def poke(self) -> None:
        self.woken = True
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    def reset(self) -> None:
        self.generation += 1
        self.last = None
        self.run = 0
        self.on_hold = False


class ProbeManager:
    """One asyncio task per (pod, container, probe kind), as upstream's prober manager.

    ``clock`` is what ``started_at`` is measured on (wall-clock seconds by default,
    matching CRI timestamps); ``sleep`` waits that many clock seconds. Tests scale
    both to run probe periods of a second in milliseconds. All methods but
    ``close`` are synchronous and must be called from the event loop's thread.

    ``on_change(pod_uid, container, kind, value)`` is called when a result changes:
    liveness or startup ``False`` means the container must be restarted,
    readiness changes should be posted in the pod status.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        on_change: OnChange | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        prober: ProbeRunner = run_probe,
    ) -> None:
        self._runtime = runtime
        self._on_change = on_change
        self._clock = clock
        self._sleep = sleep
        self._prober = prober
        self._pods: dict[str, _Pod] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._closed = False

    async def __aenter__(self) -> ProbeManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- pods and containers -----------------------------------------------------

    def add_pod(self, pod: core_pb2.Pod, container_ids: dict[str, str], pod_ip: str) -> None:
        """Start probing ``pod``'s containers.

        ``container_ids`` maps container names to ids of running containers (taken
        as started now); absent names have no container yet, see
        ``update_container``. Adding a known pod only updates its ids and IP.
        """
        if self._closed:
            raise RuntimeError("probe manager is closed")
        uid = pod.metadata.uid
        known = self._pods.get(uid)
        if known is not None:
            if pod_ip:
                self.set_pod_ip(uid, pod_ip)
            for name, container_id in container_ids.items():
                entry = known.containers.get(name)
                if entry is not None and entry.container_id != container_id:
                    self.update_container(uid, name, container_id, self._clock())
            return
        loop = asyncio.get_running_loop()
        entry_pod = _Pod(uid, pod_ip)
        now = self._clock()
        # Regular containers only: plain init containers have no probes upstream.
        for spec in pod.spec.containers:
            container = _Container(entry_pod, spec)
            container_id = container_ids.get(spec.name, "")
            if container_id:
                container.container_id, container.started_at = container_id, now
            for kind, field_name in _FIELDS.items():
                if spec.HasField(field_name):
                    container.workers[kind] = _Worker(kind, getattr(spec, field_name), container)
            entry_pod.containers[spec.name] = container
        self._pods[uid] = entry_pod
        for container in entry_pod.containers.values():
            for worker in container.workers.values():
                worker.task = loop.create_task(
                    self._run(worker), name=f"probe {worker.kind} {uid}/{container.spec.name}"
                )

    def set_pod_ip(self, pod_uid: str, pod_ip: str) -> None:
        pod = self._pods.get(pod_uid)
        if pod is not None and pod.ip != pod_ip:
            pod.ip = pod_ip
            for container in pod.containers.values():
                for worker in container.workers.values():
                    worker.poke()

    def update_container(
        self, pod_uid: str, container_name: str, container_id: str, started_at: float | None
    ) -> None:
        """The container's current instance: its id and when it started running
        (on the manager's clock; None while it is not running)."""
        pod = self._pods.get(pod_uid)
        container = pod.containers.get(container_name) if pod is not None else None
        if container is None:
            return
        if container_id != container.container_id:
            # A new instance: results start over and held workers resume.
            container.container_id = container_id
            container.started_at = started_at
            container.outcomes.clear()
            for kind in _FIELDS:
                self._set(container, kind, _INITIAL[kind])
            for worker in container.workers.values():
                worker.reset()
                worker.poke()
        elif started_at != container.started_at:
            container.started_at = started_at
            for worker in container.workers.values():
                worker.poke()
        if container.container_id and started_at is None:
            # A container that is not running cannot be ready.
            self._set(container, "readiness", False)

    def remove_pod(self, pod_uid: str) -> None:
        """Stop probing the pod; its workers are cancelled (``close`` awaits them)."""
        pod = self._pods.pop(pod_uid, None)
        if pod is None:
            return
        for container in pod.containers.values():
            for worker in container.workers.values():
                if worker.task is not None:
                    worker.task.cancel()
                    self._stopping.add(worker.task)
                    worker.task.add_done_callback(self._stopping.discard)

    async def close(self) -> None:
        """Cancel every worker and wait until they are gone."""
        self._closed = True
        for uid in list(self._pods):
            self.remove_pod(uid)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)

    # -- results -------------------------------------------------------------------

    def readiness(self, pod_uid: str, container: str) -> bool | None:
        """Whether the container is ready; None for an unknown pod or container.

        Not running or not started: False. No readiness probe: True.
        """
        entry = self._container(pod_uid, container)
        if entry is None:
            return None
        if not entry.running or not entry.started:
            return False
        if "readiness" not in entry.workers:
            return True
        return entry.results["readiness"] is True

    def liveness_failed(self, pod_uid: str, container: str, container_id: str = "") -> bool:
        """The container failed its liveness probe, or its startup probe: restart it.

        With ``container_id``, only a verdict about that instance counts, so a
        caller that already restarted it does not kill the new one on a stale result.
        """
        entry = self._container(pod_uid, container)
        if entry is None or (container_id and container_id != entry.container_id):
            return False
        return entry.results["liveness"] is False or entry.results["startup"] is False

    def startup_done(self, pod_uid: str, container: str) -> bool:
        """Running and past its startup probe (or it has none): Kubernetes' ``started``."""
        entry = self._container(pod_uid, container)
        return entry is not None and entry.running and entry.started

    def last_outcome(self, pod_uid: str, container: str, kind: ProbeKind) -> ProbeOutcome | None:
        """The latest probe outcome of the current instance, for events and logs."""
        entry = self._container(pod_uid, container)
        return entry.outcomes.get(kind) if entry is not None else None

    def _container(self, pod_uid: str, name: str) -> _Container | None:
        pod = self._pods.get(pod_uid)
        return pod.containers.get(name) if pod is not None else None

    def _set(self, container: _Container, kind: ProbeKind, value: bool | None) -> None:
        if container.results[kind] == value:
            return
        container.results[kind] = value
        if kind == "startup" and value is True:
            # Readiness should not wait a whole period after startup (upstream
            # triggers the readiness worker when the status is computed).
            readiness = container.workers.get("readiness")
            if readiness is not None:
                readiness.poke()
        if value is not None and self._on_change is not None:
            try:
                self._on_change(container.pod.uid, container.spec.name, kind, value)
            except Exception:
                log.exception("probe on_change callback failed", pod_uid=container.pod.uid)

    # -- the worker loop -------------------------------------------------------------

    async def _run(self, worker: _Worker) -> None:
        while True:
            try:
                delay = await self._step(worker)
            except Exception:
                log.exception("probe worker step failed", kind=worker.kind)
                delay = worker.period
            await self._wait(worker, delay)

    async def _wait(self, worker: _Worker, delay: float) -> None:
        if worker.woken or delay <= 0:
            worker.woken = False
            return
        loop = asyncio.get_running_loop()
        worker.wake = loop.create_future()
        sleeper = loop.create_task(self._sleep_for(delay))
        try:
            await asyncio.wait((sleeper, worker.wake), return_when=asyncio.FIRST_COMPLETED)
        finally:
            worker.wake = None
            worker.woken = False
            if not sleeper.done():
                sleeper.cancel()
                try:
                    await sleeper
                except asyncio.CancelledError:
                    # Swallow the sleeper's cancellation only, never our own.
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise

    async def _sleep_for(self, seconds: float) -> None:
        await self._sleep(seconds)

    async def _step(self, worker: _Worker) -> float:
        """Probe once if it is time; returns how long to wait before the next step."""
        container = worker.container
        if not container.container_id or worker.on_hold:
            return worker.period
        if container.started_at is None:
            return worker.period  # not running: update_container wakes us
        now = self._clock()
        delay_left = container.started_at + worker.probe.initial_delay_seconds - now
        if delay_left > 0:
            return delay_left
        if worker.kind == "startup":
            if container.started:
                return worker.period  # passed: nothing to do until a new instance
        elif not container.started:
            return worker.period  # gated by the startup probe, which wakes readiness
        generation = worker.generation
        try:
            outcome = await self._prober(
                worker.probe,
                runtime=self._runtime,
                container_id=container.container_id,
                pod_ip=container.pod.ip,
                container_ports=list(container.spec.ports),
            )
        except Exception as exc:
            # E.g. a runtime error outside the CRI's own: it says nothing about
            # the container, so it is thrown away like any "unknown".
            log.warning("probe errored", kind=worker.kind, error=repr(exc))
            outcome = _unknown(repr(exc))
        if generation != worker.generation:
            return worker.period  # the container changed meanwhile; we were poked
        elapsed = self._clock() - now
        next_in = max(0.0, worker.period - elapsed)  # a ticker: periods start to start
        if outcome.result == "unknown":
            return next_in
        container.outcomes[worker.kind] = outcome
        if outcome.result == worker.last:
            worker.run += 1
        else:
            worker.last, worker.run = outcome.result, 1
        passed = outcome.result == "success"
        probe = worker.probe
        if passed:
            threshold = probe.success_threshold or _DEFAULT_SUCCESS
        else:
            threshold = probe.failure_threshold or _DEFAULT_FAILURE
        if worker.run < threshold:
            return next_in
        self._set(container, worker.kind, passed)
        if not passed and worker.kind in ("liveness", "startup"):
            # The container will be restarted: stop probing it until a new instance
            # shows up (upstream's onHold).
            worker.on_hold = True
            worker.run = 0
        return next_in
