"""Interactive exec, attach, port-forward, top and cp against a real containerd:
client/CLI -> master process -> the in-process kubelet -> CRI Exec/Attach/
PortForward -> containerd's streaming server (websocket v4.channel.k8s.io).

containerd and its pods live in the test's own network namespace; the kubelet
dials the streaming server inside it. Port-forward traffic goes from 127.0.0.1
(this test) to the CLI's loopback listener, then through gRPC to the pod.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubeling.client import Client
from kubeling.client.pods import open_attach, open_exec, open_port_forward, pod_exec, pod_top
from kubeling.cri.client import RuntimeClient
from kubeling.kubelet.kubelet import Kubelet
from kubeling.v1 import apps_pb2, core_pb2
from tests.kubelet.test_kubelet_containerd import NODE, config, pod, sh
from tests.kubelet.test_kubelet_fake import phase_of
from tests.support.containerd import PrivateContainerd
from tests.support.processes import MasterProcess, free_port
from tests.support.real_kubelet import remove_node_pods
from tests.support.terminal import Pty, set_size
from tests.support.waiting import eventually_passes

pytestmark = pytest.mark.slow

KUBELING = Path(sys.executable).parent / "kubeling"


@pytest.fixture(scope="module")
async def running(
    master: MasterProcess, containerd: PrivateContainerd
) -> AsyncIterator[tuple[Client, MasterProcess]]:
    """A kubelet for the module with two pods: `shell` (busybox, idle) and `web`
    (busybox httpd on 8080)."""
    async with Client(master.address, timeout=10) as api:
        runtime = RuntimeClient(containerd.endpoint)
        settings = dataclasses.replace(
            config(master, containerd), runtime_stream_netns=str(containerd.netns)
        )
        kubelet = Kubelet(settings, runtime, api)
        await kubelet.start()
        try:
            await api.pods.create(pod("shell", sh("main", "exec sleep 3600")))
            web = sh(
                "web",
                "mkdir -p /www && echo hello-through-port-forward > /www/index.html && "
                "exec httpd -f -p 8080 -h /www",
            )
            web.ports.add(name="http", container_port=8080)
            web_pod = pod("web", web)
            web_pod.metadata.labels["app"] = "web"
            await api.pods.create(web_pod)
            ticker = sh("ticker", "i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.3; done")
            await api.pods.create(pod("ticker", ticker))
            reader = sh("reader", "while read line; do echo got:$line; done; echo stdin-ended")
            reader.stdin = True
            await api.pods.create(pod("reader", reader))
            for name in ("shell", "web", "ticker", "reader"):
                await eventually_passes(lambda n=name: phase_of(api, n, "Running"), 60)
            yield api, master
        finally:
            await remove_node_pods(api, NODE)
            await kubelet.stop()
            await runtime.close()


async def test_exec_stream_output_and_exit_code(running: tuple[Client, MasterProcess]) -> None:
    api, _ = running
    call = await open_exec(api, "shell", ["sh", "-c", "echo out; echo err >&2; exit 3"])
    out, err, exits = b"", b"", []
    async for message in call:
        kind = message.WhichOneof("kind")
        if kind == "stdout":
            out += message.stdout
        elif kind == "stderr":
            err += message.stderr
        else:
            exits.append(message.exit)
    assert (out, err) == (b"out\n", b"err\n")
    assert [(e.exit_code, e.message) for e in exits] == [(3, "")]


async def test_exec_stdin_without_tty(running: tuple[Client, MasterProcess]) -> None:
    """-i pipes stdin: the command reads the line it was given."""
    _, master = running
    proc = await asyncio.create_subprocess_exec(
        str(KUBELING), "--server", master.address, "exec", "-i", "shell", "--",
        "sh", "-c", "read line; echo got:$line; exit 4",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(b"piped words\n"), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert out == b"got:piped words\n", err
    assert proc.returncode == 4
    assert b"command terminated with exit code 4" in err


async def test_exec_it_interactive_shell_resize_and_exit_code(
    running: tuple[Client, MasterProcess],
) -> None:
    _, master = running
    term = Pty(
        [str(KUBELING), "--server", master.address, "exec", "-it", "shell", "--", "sh"],
        rows=31,
        cols=97,
    )
    try:
        # busybox sh asks where the cursor is (ESC[6n) before its prompt: answer
        # as a terminal would, then type.
        await term.read_until(b"\x1b[6n")
        term.write(b"\x1b[1;1R")
        await term.read_until(b"/ # ")
        term.write(b"stty size; echo hi\n")
        await term.read_until(b"31 97")
        await term.read_until(b"hi\r\n")
        # A resize of the local terminal reaches the remote one.
        set_size(term.master_fd, 40, 120)
        os.kill(term.pid, signal.SIGWINCH)
        await asyncio.sleep(0.5)
        term.write(b"stty size\n")
        await term.read_until(b"40 120")
        term.write(b"exit 3\n")
        assert await term.wait() == 3
    finally:
        term.close()


async def test_port_forward_session(running: tuple[Client, MasterProcess]) -> None:
    api, _ = running
    call = await open_port_forward(api, "web", 8080)
    request = b"GET /index.html HTTP/1.0\r\nHost: web\r\n\r\n"
    await call.write(core_pb2.PortForwardRequest(data=request))
    received = b""
    async for message in call:
        assert message.WhichOneof("kind") == "data", message
        received += message.data
        if b"hello-through-port-forward" in received:
            break
    call.cancel()
    assert received.startswith(b"HTTP/1.") and b"hello-through-port-forward" in received


async def test_cli_port_forward_serves_a_request(running: tuple[Client, MasterProcess]) -> None:
    _, master = running
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(KUBELING), "--server", master.address, "port-forward", "pod/web", f"{port}:8080",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert f"127.0.0.1:{port} -> 8080".encode() in line, line

        def fetch() -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=10) as r:
                return bytes(r.read())

        for _ in range(2):  # two connections, one session each
            assert await asyncio.to_thread(fetch) == b"hello-through-port-forward\n"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0  # Ctrl-C is how it ends


async def test_cli_port_forward_to_a_service_port(running: tuple[Client, MasterProcess]) -> None:
    """svc/NAME: a pod of its selector, the service port mapped to its (named) targetPort."""
    api, master = running
    service = core_pb2.Service()
    service.metadata.name = "web"
    service.metadata.namespace = "default"
    service.spec.selector["app"] = "web"
    service.spec.ports.add(name="http", port=80).target_port.string_value = "http"
    await api.services.create(service)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(KUBELING), "--server", master.address, "port-forward", "svc/web", f"{port}:80",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line == f"Forwarding from 127.0.0.1:{port} -> 8080\n".encode()

        def fetch() -> bytes:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
                return bytes(r.read())

        assert await asyncio.to_thread(fetch) == b"hello-through-port-forward\n"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await api.services.delete("web", "default")


async def test_exec_still_works_unary(running: tuple[Client, MasterProcess]) -> None:
    api, _ = running
    reply = await pod_exec(api, "shell", ["sh", "-c", "echo unary; exit 2"])
    assert (reply.stdout, reply.exit_code) == ("unary\n", 2)


async def test_attach_streams_the_running_process_output(
    running: tuple[Client, MasterProcess],
) -> None:
    api, _ = running
    call = await open_attach(api, "ticker")
    seen = b""
    try:
        async with asyncio.timeout(20):
            async for message in call:
                seen += message.stdout
                if seen.count(b"tick-") >= 2:
                    break
    finally:
        call.cancel()
    assert b"tick-" in seen


async def test_cli_attach(running: tuple[Client, MasterProcess]) -> None:
    _, master = running
    proc = await asyncio.create_subprocess_exec(
        str(KUBELING), "--server", master.address, "attach", "pod/ticker",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line.startswith(b"tick-"), line
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_top_pods_and_nodes(running: tuple[Client, MasterProcess]) -> None:
    api, master = running
    usage = await pod_top(api, "default", "ticker")
    assert [(c.pod, c.container, c.node_name) for c in usage.containers] == [
        ("ticker", "ticker", NODE)
    ]
    assert usage.containers[0].memory_working_set_bytes > 0
    proc = await asyncio.create_subprocess_exec(
        str(KUBELING), "--server", master.address, "top", "pods",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert lines[0].split() == ["NAME", "CPU(cores)", "MEMORY(bytes)"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(rows) >= {"shell", "web", "ticker"}
    assert rows["ticker"][0].endswith("m") and rows["ticker"][1].endswith("Mi")
    proc = await asyncio.create_subprocess_exec(
        str(KUBELING), "--server", master.address, "top", "nodes",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    node_row = next(line.split() for line in out.decode().splitlines() if line.startswith(NODE))
    assert node_row[1].endswith("m") and int(node_row[3].removesuffix("Mi")) >= 0


async def test_cp_both_ways(running: tuple[Client, MasterProcess], tmp_path: Path) -> None:
    api, master = running
    payload = os.urandom(200_000) + b"end"
    local = tmp_path / "data.bin"
    local.write_bytes(payload)

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            str(KUBELING), "--server", master.address, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, err.decode()

    assert await cli("cp", str(local), "shell:/tmp/copied.bin") == (0, "")
    reply = await pod_exec(
        api, "shell", ["sh", "-c", "wc -c < /tmp/copied.bin; md5sum /tmp/copied.bin"]
    )

    size, digest = reply.stdout.split()[:2]
    assert (int(size), digest) == (len(payload), hashlib.md5(payload).hexdigest())
    # POD:DIR/ copies into the directory under the local name.
    assert await cli("cp", str(local), "shell:/tmp/") == (0, "")
    listed = await pod_exec(api, "shell", ["wc", "-c", "/tmp/data.bin"])
    assert listed.stdout.split()[0] == str(len(payload))
    back = tmp_path / "back.bin"
    assert await cli("cp", "default/shell:/tmp/copied.bin", str(back)) == (0, "")
    assert back.read_bytes() == payload
    # A directory, into an existing local directory.
    await pod_exec(api, "shell", ["sh", "-c", "mkdir -p /tmp/d/sub && echo x > /tmp/d/sub/f"])
    into = tmp_path / "into"
    into.mkdir()
    assert await cli("cp", "shell:/tmp/d", str(into)) == (0, "")
    assert (into / "d" / "sub" / "f").read_text() == "x\n"


def _deployment(name: str, labels: dict[str, str]) -> apps_pb2.Deployment:
    """A Deployment object only (this master runs no controllers): its selector is
    what `logs deploy/NAME` follows; the test makes the pods."""
    deploy = apps_pb2.Deployment()
    deploy.metadata.name = name
    deploy.metadata.namespace = "default"
    deploy.spec.replicas = 1
    deploy.spec.selector.match_labels.update(labels)
    deploy.spec.template.metadata.labels.update(labels)
    deploy.spec.template.spec.containers.add(name="main", image="busybox")
    return deploy


async def test_logs_follow_a_deployment_and_a_new_pod(
    running: tuple[Client, MasterProcess],
) -> None:
    api, master = running
    labels = {"app": "logger"}
    await api.deployments.create(_deployment("logger", labels))

    def logger(index: int) -> core_pb2.Pod:
        obj = pod(f"logger-{index}", sh("main", f"echo line-from-{index}; exec sleep 3600"))
        obj.metadata.labels.update(labels)
        return obj

    await api.pods.create(logger(1))
    await eventually_passes(lambda: phase_of(api, "logger-1", "Running"), 60)
    proc = await asyncio.create_subprocess_exec(
        str(KUBELING), "--server", master.address, "logs", "-f", "deploy/logger",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line == b"[pod/logger-1/main] line-from-1\n"
        # A pod that comes later (a rollout's new one) is followed too.
        await api.pods.create(logger(2))
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line == b"[pod/logger-2/main] line-from-2\n"
        # exec takes a workload too: one of its pods (the oldest ready one).
        picked = await asyncio.create_subprocess_exec(
            str(KUBELING), "--server", master.address, "exec", "deploy/logger", "--",
            "hostname", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        host, err = await asyncio.wait_for(picked.communicate(), 30)
        assert (picked.returncode, host) == (0, b"logger-1\n"), err
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await api.deployments.delete("logger", "default")
    assert proc.returncode == 0
    # Without -f: every pod once, prefixed; -l selects the same.
    out = await asyncio.create_subprocess_exec(
        str(KUBELING), "--server", master.address, "logs", "-l", "app=logger",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    text, err = await asyncio.wait_for(out.communicate(), 30)
    assert sorted(text.decode().splitlines()) == [
        "[pod/logger-1/main] line-from-1",
        "[pod/logger-2/main] line-from-2",
    ], err


async def test_cli_attach_to_a_container_reading_stdin(
    running: tuple[Client, MasterProcess],
) -> None:
    _, master = running
    proc = await asyncio.create_subprocess_exec(
        str(KUBELING), "--server", master.address, "attach", "-i", "reader",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"first words\n")
        await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line == b"got:first words\n"
        proc.stdin.write(b"second\n")
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"got:second\n"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
