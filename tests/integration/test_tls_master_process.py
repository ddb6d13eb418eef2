"""A real `kubeling-master` process, TLS by default: its admin.conf is the way in;
--insecure only on loopback; controllers run as kubeling:master."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from kubeling.client import Client
from kubeling.v1 import apps_pb2
from tests.integration.test_tls_master import refused
from tests.support.inprocess import tls_master
from tests.support.processes import free_port, stop_process
from tests.support.waiting import eventually


def start(data_dir: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = data_dir.parent / f"{data_dir.name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "kubeling.master.main", "--data-dir", str(data_dir),
             "--metrics-bind-address", "", "--controllers=", *args],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    return process, log


async def test_the_master_serves_tls_and_writes_an_admin_conf(tmp_path: Path) -> None:
    port, join_port = free_port(), free_port()
    data = tmp_path / "data"
    process, log = start(
        data, "--listen", f"127.0.0.1:{port}", "--join-listen", f"127.0.0.1:{join_port}",
        "--tls-san", "master.example,10.9.9.9", "--cert-validity", "30d", "--bootstrap-tokens",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (data / "admin.conf").exists():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)
        async with Client.from_config(data / "admin.conf", timeout=5) as admin:
            ns = await eventually(
                lambda: admin.namespaces.get("default"), 20, retry_on=(grpc.aio.AioRpcError,)
            )
            assert ns.metadata.name == "default"
        # Plaintext gets nowhere.
        async with Client(f"127.0.0.1:{port}", timeout=3) as plain:
            await refused(plain.namespaces.get("default"), grpc.StatusCode.UNAVAILABLE)
    finally:
        stop_process(process)
    text = log.read_text()
    assert "no join token printed (not a terminal)" in text
    assert not (data / "bootstrap-tokens.json").exists()


def test_insecure_is_for_loopback_only(tmp_path: Path) -> None:
    process, log = start(tmp_path / "d", "--insecure", "--listen", f"0.0.0.0:{free_port()}")
    try:
        assert process.wait(timeout=30) == 2
    finally:
        stop_process(process)
    assert "without TLS a server listens only on loopback or a unix socket" in log.read_text()
    assert not (tmp_path / "d" / "pki").exists()


def test_the_flags() -> None:
    from kubeling.master.main import parse_args

    args = parse_args([])
    assert (args.insecure, args.join_listen, args.tls_san) == (False, "0.0.0.0:6444", [])
    assert args.cert_validity == 365 * 86400
    args = parse_args(["--tls-san", "a.example,10.0.0.1", "--tls-san", "b.example",
                       "--cert-validity", "1d12h", "--join-listen", ""])  # fmt: skip
    assert args.tls_san == ["a.example", "10.0.0.1", "b.example"]
    assert args.cert_validity == 36 * 3600
    assert args.join_listen == ""
    assert parse_args(["--cert-validity", "90m"]).cert_validity == 5400
    for bad in (["--tls-san", "bad name"], ["--cert-validity", "0"], ["--cert-validity", "x"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


async def test_the_controllers_of_a_tls_master_work(tmp_path: Path) -> None:
    async with tls_master(tmp_path, controllers={"*"}) as (_, admin):
        deploy = apps_pb2.Deployment()
        deploy.metadata.name = "web"
        deploy.spec.replicas = 1
        deploy.spec.selector.match_labels["app"] = "web"
        deploy.spec.template.metadata.labels["app"] = "web"
        deploy.spec.template.spec.containers.add(name="c", image="busybox")
        await admin.deployments.create(deploy)

        async def replica_sets() -> int:
            return len((await admin.replica_sets.list()).items)

        assert await eventually(replica_sets, 20) == 1
