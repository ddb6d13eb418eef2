"""Probes: exec through the fake runtime, httpGet/tcpSocket on loopback, and the workers."""

from __future__ import annotations

import asyncio
import functools
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kubeling.cri.fake import FakeRuntime
from kubeling.cri.runtime import Runtime
from kubeling.kubelet.probes import (
    ProbeKind,
    ProbeManager,
    ProbeOutcome,
    ProbeResult,
    resolve_port,
    run_probe,
)
from kubeling.v1 import core_pb2
from tests.cri.helpers import container_config, start_pod
from tests.support import waiting

LOOPBACK = "127.0.0.1"

# Probe rigs run on a scaled clock: poll often, give up soon.
eventually = functools.partial(waiting.eventually, within=2.0, interval=0.005)


# -- helpers ---------------------------------------------------------------------


def exec_probe(*cmd: str, timeout: int = 1) -> core_pb2.Probe:
    probe = core_pb2.Probe(timeout_seconds=timeout, period_seconds=10)
    probe.exec.command.extend(cmd)
    return probe


def http_probe(
    path: str,
    port: int | str,
    *,
    scheme: str = "HTTP",
    timeout: int = 1,
    headers: Sequence[tuple[str, str]] = (),
) -> core_pb2.Probe:
    probe = core_pb2.Probe(timeout_seconds=timeout)
    probe.http_get.path = path
    probe.http_get.scheme = scheme
    if isinstance(port, int):
        probe.http_get.port.number_value = port
    else:
        probe.http_get.port.string_value = port
    for name, value in headers:
        probe.http_get.http_headers.add(name=name, value=value)
    return probe


def tcp_probe(port: int | str) -> core_pb2.Probe:
    probe = core_pb2.Probe(timeout_seconds=1)
    if isinstance(port, int):
        probe.tcp_socket.port.number_value = port
    else:
        probe.tcp_socket.port.string_value = port
    return probe


async def probe_once(
    probe: core_pb2.Probe,
    *,
    runtime: Runtime | None = None,
    container_id: str = "",
    ports: Sequence[core_pb2.ContainerPort] = (),
) -> ProbeOutcome:
    return await run_probe(
        probe,
        runtime=runtime or FakeRuntime(),
        container_id=container_id,
        pod_ip=LOOPBACK,
        container_ports=ports,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


# -- exec ------------------------------------------------------------------------


async def fake_container(env: dict[str, str] | None = None) -> tuple[FakeRuntime, str]:
    runtime = FakeRuntime(images=["busybox"])
    _, container_id = await start_pod(runtime, container=container_config(env=env))
    return runtime, container_id


async def test_exec_exit_zero_is_success() -> None:
    runtime, cid = await fake_container()
    outcome = await probe_once(exec_probe("echo", "hi"), runtime=runtime, container_id=cid)
    assert outcome == ProbeOutcome("success", "hi\n")


async def test_exec_nonzero_exit_is_failure() -> None:
    runtime, cid = await fake_container({"FAKE_EXEC_EXIT_CODE": "3", "FAKE_EXEC_STDERR": "bad"})
    outcome = await probe_once(exec_probe("check"), runtime=runtime, container_id=cid)
    assert outcome.result == "failure"
    assert "exited with 3" in outcome.message and "bad" in outcome.message


async def test_exec_timeout_is_failure() -> None:
    runtime, cid = await fake_container({"FAKE_EXEC_DELAY": "5s"})
    began = time.monotonic()
    outcome = await probe_once(exec_probe("sleep", timeout=1), runtime=runtime, container_id=cid)
    assert outcome.result == "failure"
    assert "timed out" in outcome.message
    assert time.monotonic() - began < 2.5


async def test_exec_in_a_stopped_container_is_unknown() -> None:
    runtime, cid = await fake_container()
    await runtime.stop_container(cid, 0)
    outcome = await probe_once(exec_probe("true"), runtime=runtime, container_id=cid)
    assert outcome.result == "unknown"


# -- httpGet ---------------------------------------------------------------------


@dataclass
class HTTPServer:
    port: int
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)  # body bytes of endless answers
    ended: dict[str, asyncio.Event] = field(default_factory=dict)  # the client hung up


# Answers whose body never ends: a head, then the same block forever.
ENDLESS = {
    "/endless-chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7fffffff\r\n",
        b"x" * 65536,
    ),
    "/endless-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n", b"y" * 65536),
    # A chunk-size line that never ends.
    "/endless-chunk-size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"f" * 65536,
    ),
}


def reply(status: str, headers: Sequence[str] = (), body: bytes = b"") -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def serve(
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[asyncio.Server, HTTPServer]:
    info = HTTPServer(port=0)

    async def slow() -> bytes:
        await asyncio.sleep(3)
        return reply("200 OK")

    async def fixed(data: bytes) -> bytes:
        return data

    def route(path: str) -> Awaitable[bytes]:
        if path == "/slow":
            return slow()
        answers = {
            "/ok": reply("200 OK", body=b"fine"),
            "/fail": reply("500 Internal Server Error", body=b"broken"),
            "/away": reply("302 Found", [f"Location: http://elsewhere.invalid:{info.port}/ok"]),
            "/here": reply("302 Found", ["Location: /ok"]),
            "/here-to-fail": reply("301 Moved Permanently", ["Location: /fail"]),
            "/loop": reply("302 Found", ["Location: /loop"]),
            "/keepalive": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\nfine\r\n0\r\n\r\n",
        }
        return fixed(answers.get(path, reply("404 Not Found")))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            if not request_line:
                return  # a tcpSocket probe: connect and go
            path = request_line.split()[1]
            info.requests.append((path, headers))
            if path in ENDLESS:
                await send_forever(path, writer)
                return
            writer.write(await route(path))
            await writer.drain()
            if path == "/keepalive":
                await asyncio.sleep(3)  # ignores "Connection: close"
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def send_forever(path: str, writer: asyncio.StreamWriter) -> None:
        head, block = ENDLESS[path]
        info.sent[path] = 0
        ended = info.ended.setdefault(path, asyncio.Event())
        writer.write(head)
        try:
            while True:
                writer.write(block)
                await writer.drain()  # blocks while the client does not read
                info.sent[path] += len(block)
        except ConnectionError:
            ended.set()

    server = await asyncio.start_server(handle, LOOPBACK, 0, ssl=ssl_context)
    info.port = server.sockets[0].getsockname()[1]
    return server, info


@pytest.fixture
async def http() -> AsyncIterator[HTTPServer]:
    server, info = await serve()
    try:
        yield info
    finally:
        server.close()
        await server.wait_closed()


async def test_http_200_is_success_with_kube_probe_headers(http: HTTPServer) -> None:
    probe = http_probe("/ok", http.port, headers=[("X-Custom", "yes")])
    outcome = await probe_once(probe)
    assert outcome.result == "success"
    path, headers = http.requests[-1]
    assert path == "/ok"
    assert headers["host"] == f"{LOOPBACK}:{http.port}"
    assert headers["user-agent"].startswith("kube-probe/")
    assert headers["x-custom"] == "yes"


async def test_http_host_header_can_be_overridden(http: HTTPServer) -> None:
    await probe_once(http_probe("/ok", http.port, headers=[("Host", "example.com")]))
    assert http.requests[-1][1]["host"] == "example.com"


async def test_http_500_is_failure_with_the_status(http: HTTPServer) -> None:
    outcome = await probe_once(http_probe("/fail", http.port))
    assert outcome.result == "failure"
    assert "500" in outcome.message


async def test_http_404_is_failure(http: HTTPServer) -> None:
    outcome = await probe_once(http_probe("/missing", http.port))
    assert outcome == ProbeOutcome("failure", "HTTP probe failed with statuscode: 404")


async def test_http_redirect_to_another_host_is_not_followed(http: HTTPServer) -> None:
    outcome = await probe_once(http_probe("/away", http.port))
    assert outcome.result == "success"
    assert "302" in outcome.message
    assert [path for path, _ in http.requests] == ["/away"]


async def test_http_redirect_on_the_same_host_is_followed(http: HTTPServer) -> None:
    assert (await probe_once(http_probe("/here", http.port))).result == "success"
    assert (await probe_once(http_probe("/here-to-fail", http.port))).result == "failure"
    assert [path for path, _ in http.requests] == ["/here", "/ok", "/here-to-fail", "/fail"]


async def test_http_redirect_loop_stops_after_ten(http: HTTPServer) -> None:
    outcome = await probe_once(http_probe("/loop", http.port))
    # As Go's client in upstream's prober: an error after 10 redirects, so a failure.
    assert outcome.result == "failure"
    assert "stopped after 10 redirects" in outcome.message
    assert len(http.requests) == 11


@pytest.mark.parametrize("path", ["/endless-chunked", "/endless-length"])
async def test_http_endless_body_is_not_read(http: HTTPServer, path: str) -> None:
    outcome = await probe_once(http_probe(path, http.port, timeout=5))
    # Had the prober read the whole body it would have hit its deadline instead.
    assert outcome == ProbeOutcome("success", "HTTP probe succeeded with statuscode: 200")
    # It hung up after its 10 KiB; what the server got out is what the kernel's
    # socket buffers took, not the terabyte it offered.
    await asyncio.wait_for(http.ended[path].wait(), 5)
    assert http.sent[path] < 32 * 1024 * 1024


async def test_http_endless_chunk_size_line_is_a_failure(http: HTTPServer) -> None:
    outcome = await probe_once(http_probe("/endless-chunk-size", http.port, timeout=5))
    assert outcome.result == "failure"
    assert "deadline" not in outcome.message, outcome.message
    assert len(outcome.message) < 400  # not the bytes the server sent
    await asyncio.wait_for(http.ended["/endless-chunk-size"].wait(), 5)


async def test_http_slow_answer_times_out(http: HTTPServer) -> None:
    began = time.monotonic()
    outcome = await probe_once(http_probe("/slow", http.port, timeout=1))
    assert outcome.result == "failure"
    assert "deadline" in outcome.message
    assert time.monotonic() - began < 2


async def test_http_chunked_answer_on_a_kept_open_connection(http: HTTPServer) -> None:
    began = time.monotonic()
    assert (await probe_once(http_probe("/keepalive", http.port))).result == "success"
    assert time.monotonic() - began < 0.5


async def test_http_connection_refused_is_failure() -> None:
    outcome = await probe_once(http_probe("/ok", closed_port()))
    assert outcome.result == "failure"
    assert "refused" in outcome.message.lower()


async def test_http_named_port(http: HTTPServer) -> None:
    ports = [core_pb2.ContainerPort(name="web", container_port=http.port)]
    assert (await probe_once(http_probe("/ok", "web"), ports=ports)).result == "success"
    missing = await probe_once(http_probe("/ok", "admin"), ports=ports)
    assert missing.result == "failure"
    assert "not found" in missing.message


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate and key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=probe"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_does_not_verify_the_certificate(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server, info = await serve(context)
    try:
        outcome = await probe_once(http_probe("/ok", info.port, scheme="HTTPS"))
        assert outcome.result == "success", outcome.message
        plain = await probe_once(http_probe("/ok", info.port, scheme="HTTP"))
        assert plain.result == "failure"
    finally:
        server.close()
        await server.wait_closed()


# -- tcpSocket -------------------------------------------------------------------


async def test_tcp_open_and_closed_ports(http: HTTPServer) -> None:
    assert (await probe_once(tcp_probe(http.port))).result == "success"
    closed = await probe_once(tcp_probe(closed_port()))
    assert closed.result == "failure"
    assert "refused" in closed.message.lower()
    ports = [core_pb2.ContainerPort(name="svc", container_port=http.port)]
    assert (await probe_once(tcp_probe("svc"), ports=ports)).result == "success"


def test_resolve_port() -> None:
    probe = tcp_probe("8080")  # an int stored as a string still works
    assert resolve_port(probe.tcp_socket.port, []) == 8080
    with pytest.raises(ValueError, match="invalid port"):
        resolve_port(tcp_probe(70000).tcp_socket.port, [])
    with pytest.raises(ValueError, match="no port"):
        resolve_port(core_pb2.TCPSocketAction().port, [])


# -- ProbeManager ------------------------------------------------------------------

SCALE = 0.02  # one probe second is 20 ms here


def clock() -> float:
    return time.monotonic() / SCALE


async def scaled_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds * SCALE)


class Script:
    """A prober whose answers per probe kind are set by the test.

    Probes are exec probes whose command names their kind.
    """

    def __init__(self) -> None:
        self.answers: dict[str, list[ProbeResult]] = {}
        self.default: dict[str, ProbeResult] = {}
        self.calls: list[tuple[str, str, float]] = []  # kind, container id, clock

    def set(self, kind: str, *results: ProbeResult, then: ProbeResult | None = None) -> None:
        self.answers[kind] = list(results)
        if then is not None:
            self.default[kind] = then

    def count(self, kind: str) -> int:
        return sum(1 for k, _, _ in self.calls if k == kind)

    async def __call__(
        self,
        probe: core_pb2.Probe,
        *,
        runtime: Runtime,
        container_id: str,
        pod_ip: str,
        container_ports: Sequence[core_pb2.ContainerPort],
    ) -> ProbeOutcome:
        kind = probe.exec.command[0]
        self.calls.append((kind, container_id, clock()))
        queue = self.answers.get(kind, [])
        result = queue.pop(0) if queue else self.default.get(kind, "success")
        return ProbeOutcome(result, f"{kind} said {result}")


def probe_spec(
    kind: str, *, period: int = 1, delay: int = 0, success: int = 1, failure: int = 3
) -> core_pb2.Probe:
    return core_pb2.Probe(
        exec=core_pb2.ExecAction(command=[kind]),
        initial_delay_seconds=delay,
        timeout_seconds=1,
        period_seconds=period,
        success_threshold=success,
        failure_threshold=failure,
    )


def pod(uid: str = "u1", **probes: core_pb2.Probe) -> core_pb2.Pod:
    obj = core_pb2.Pod()
    obj.metadata.uid = uid
    obj.metadata.name = "web"
    container = obj.spec.containers.add(name="c", image="busybox")
    for kind, probe in probes.items():
        getattr(container, f"{kind}_probe").CopyFrom(probe)
    obj.spec.containers.add(name="plain", image="busybox")
    return obj


Change = tuple[str, str, ProbeKind, bool]


@dataclass
class Rig:
    manager: ProbeManager
    script: Script
    changes: list[Change]
    calls_at_change: list[int] = field(default_factory=list)  # probes run by then


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    script = Script()
    changes: list[Change] = []
    calls_at_change: list[int] = []

    def on_change(*change: *Change) -> None:
        changes.append(change)
        calls_at_change.append(len(script.calls))

    manager = ProbeManager(
        FakeRuntime(), on_change=on_change, clock=clock, sleep=scaled_sleep, prober=script
    )
    try:
        yield Rig(manager, script, changes, calls_at_change)
    finally:
        await manager.close()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("probe ")]


async def test_no_probes_ready_once_running(rig: Rig) -> None:
    m = rig.manager
    m.add_pod(pod(), {}, LOOPBACK)
    assert m.readiness("u1", "plain") is False
    assert m.readiness("u1", "nope") is None and m.readiness("other", "c") is None
    m.update_container("u1", "plain", "cid-1", clock())
    assert m.readiness("u1", "plain") is True
    assert m.startup_done("u1", "plain")
    assert not m.liveness_failed("u1", "plain")
    m.update_container("u1", "plain", "cid-1", None)  # exited
    assert m.readiness("u1", "plain") is False


async def test_readiness_thresholds_and_on_change(rig: Rig) -> None:
    m, script = rig.manager, rig.script
    script.set("readiness", "failure", "success", "success", then="success")
    m.add_pod(pod(readiness=probe_spec("readiness", success=2, failure=2)), {"c": "cid"}, LOOPBACK)
    assert m.readiness("u1", "c") is False
    await eventually(lambda: m.readiness("u1", "c") is True)
    assert rig.changes == [("u1", "c", "readiness", True)]
    assert rig.calls_at_change == [3]  # failure, then two successes in a row
    script.set("readiness", "failure", then="failure")
    await eventually(lambda: m.readiness("u1", "c") is False)
    assert rig.changes[-1] == ("u1", "c", "readiness", False)
    outcome = m.last_outcome("u1", "c", "readiness")
    assert outcome is not None and outcome.result == "failure"


async def test_initial_delay_holds_the_first_probe(rig: Rig) -> None:
    m, script = rig.manager, rig.script
    m.add_pod(pod(readiness=probe_spec("readiness", delay=4)), {}, LOOPBACK)
    started = clock()
    m.update_container("u1", "c", "cid", started)
    await eventually(lambda: script.count("readiness") > 0)
    first = script.calls[0][2]
    assert first - started >= 4
    assert first - started < 4 + 10  # not held back by anything else
    assert m.readiness("u1", "c") is True


async def test_unknown_outcomes_change_nothing(rig: Rig) -> None:
    m, script = rig.manager, rig.script
    script.set("readiness", then="unknown")
    m.add_pod(pod(readiness=probe_spec("readiness", success=1)), {"c": "cid"}, LOOPBACK)
    await eventually(lambda: script.count("readiness") >= 3)
    assert m.readiness("u1", "c") is False
    assert rig.changes == []


async def test_liveness_failure_threshold_then_hold_until_new_container(rig: Rig) -> None:
    m, script = rig.manager, rig.script
    script.set("liveness", "failure", "failure", "success", then="failure")
    m.add_pod(pod(liveness=probe_spec("liveness", failure=3)), {"c": "cid-1"}, LOOPBACK)
    await eventually(lambda: m.liveness_failed("u1", "c"))
    # Runs reset on a different result: f, f, s, f, f, f.
    assert script.count("liveness") == 6
    assert rig.changes == [("u1", "c", "liveness", False)]
    assert not m.liveness_failed("u1", "c", container_id="cid-2")  # a stale verdict
    await asyncio.sleep(5 * SCALE)
    assert script.count("liveness") == 6  # on hold: the container is being restarted
    script.set("liveness", then="success")
    m.update_container("u1", "c", "cid-2", clock())
    assert not m.liveness_failed("u1", "c")
    assert rig.changes[-1] == ("u1", "c", "liveness", True)
    await eventually(lambda: any(cid == "cid-2" for _, cid, _ in script.calls))
    assert not m.liveness_failed("u1", "c")


async def test_startup_gates_liveness_and_readiness(rig: Rig) -> None:
    m, script = rig.manager, rig.script
    script.set("startup", "failure", "failure", then="success")
    spec = pod(
        startup=probe_spec("startup", period=2, failure=5),
        liveness=probe_spec("liveness", period=1),
        readiness=probe_spec("readiness", period=50),
    )
    m.add_pod(spec, {"c": "cid"}, LOOPBACK)
    assert not m.startup_done("u1", "c")
    await eventually(lambda: m.startup_done("u1", "c"))
    passed_at = [t for k, _, t in script.calls if k == "startup"][2]
    assert all(t >= passed_at for k, _, t in script.calls if k != "startup")
    # Readiness has a 50 s period but is run at once when startup passes.
    await eventually(lambda: m.readiness("u1", "c") is True, within=0.5)
    await eventually(lambda: script.count("liveness") >= 2)
    assert script.count("startup") == 3  # no more startup probes once it passed
    assert ("u1", "c", "startup", True) in rig.changes


async def test_startup_failure_means_restart(rig: Rig) -> None:
    m, script = rig.manager, rig.script
    script.set("startup", then="failure")
    spec = pod(startup=probe_spec("startup", failure=2), liveness=probe_spec("liveness"))
    m.add_pod(spec, {"c": "cid"}, LOOPBACK)
    await eventually(lambda: m.liveness_failed("u1", "c"))
    assert script.count("liveness") == 0
    assert rig.changes == [("u1", "c", "startup", False)]
    assert m.readiness("u1", "c") is False
    m.update_container("u1", "c", "cid-2", clock())
    assert not m.liveness_failed("u1", "c")


async def test_not_running_container_is_not_probed(rig: Rig) -> None:
    m, script = rig.manager, rig.script
    m.add_pod(pod(readiness=probe_spec("readiness")), {}, LOOPBACK)
    m.update_container("u1", "c", "cid", None)
    await asyncio.sleep(4 * SCALE)
    assert script.calls == []
    m.update_container("u1", "c", "cid", clock())
    await eventually(lambda: m.readiness("u1", "c") is True)
    m.update_container("u1", "c", "cid", None)
    assert m.readiness("u1", "c") is False


async def test_remove_pod_and_close_leave_no_tasks(rig: Rig) -> None:
    m = rig.manager
    probes = {"liveness": probe_spec("liveness"), "readiness": probe_spec("readiness")}
    m.add_pod(pod("a", **probes), {"c": "x"}, LOOPBACK)
    m.add_pod(pod("b", **probes), {"c": "y"}, LOOPBACK)
    await asyncio.sleep(3 * SCALE)
    m.remove_pod("a")
    assert m.readiness("a", "c") is None
    await m.close()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("probe ")]
    with pytest.raises(RuntimeError):
        m.add_pod(pod("c"), {}, LOOPBACK)


async def test_manager_with_real_exec_probes() -> None:
    runtime, cid = await fake_container({"FAKE_EXEC_FAIL_AFTER": "150ms"})
    changes: list[Change] = []
    probe = exec_probe("check")
    probe.period_seconds, probe.failure_threshold = 1, 2
    spec = pod(liveness=probe, readiness=probe)
    async with ProbeManager(
        runtime,
        on_change=lambda *change: changes.append(change),
        clock=clock,
        sleep=scaled_sleep,
    ) as m:
        m.add_pod(spec, {"c": cid}, LOOPBACK)
        await eventually(lambda: m.readiness("u1", "c") is True)
        await eventually(lambda: m.liveness_failed("u1", "c"))
    assert ("u1", "c", "liveness", False) in changes
