"""Clients given a list of masters fail over, over TLS, against real masters on loopback.

Two masters with SQLite stores of their own are two clusters, so failover is shown
at the channel: both masters share one cluster CA (the second's data directory
starts with the first's `pki/ca.crt` and `pki/ca.key`, which cluster_ca.py keeps),
each holds a marker object the other lacks, and a client given both addresses
answers from one, then, once that one stops, from the other. A watch resumes on the
other master from its last resourceVersion without listing again when that master
has the same history (the second is restored from a backup of the first). The CLI
does the same across a kill -9 of a master process; a node joins and renews through
a list whose first address is dead."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeling.client import Client, bootstrap
from kubeling.client.config import read_config
from kubeling.client.informer import Informer
from kubeling.common import pki
from kubeling.common.targets import MASTER_NAMES
from kubeling.common.tls import CredentialDir, Credentials
from kubeling.master import backup
from kubeling.master.server import Master, MasterConfig
from kubeling.v1 import core_pb2
from tests.support.processes import MasterProcess, free_port

KUBELING = Path(sys.executable).parent / "kubeling"


class Running:
    """An in-process TLS master that a test may stop before the end (stop once)."""

    def __init__(self, data_dir: Path) -> None:
        self.master = Master(
            MasterConfig(
                listen="127.0.0.1:0",
                join_listen="127.0.0.1:0",
                data_dir=data_dir,
                controllers=set(),
            )
        )
        self.address = ""
        self.stopped = False

    async def start(self) -> Running:
        self.address = f"127.0.0.1:{await self.master.start()}"
        return self

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.master.stop()

    @property
    def admin(self) -> Credentials:
        assert self.master.ca is not None
        return self.master.ca.admin_credentials()

    @property
    def join_address(self) -> str:
        return f"127.0.0.1:{self.master.join_port}"


@contextlib.asynccontextmanager
async def masters(*data_dirs: Path) -> AsyncIterator[list[Running]]:
    """Masters started in order (each later one after its data dir was prepared by
    the caller), all stopped on the way out."""
    running: list[Running] = []
    try:
        for data_dir in data_dirs:
            running.append(await Running(data_dir).start())
        yield running
    finally:
        for master in running:
            await master.stop()


def share_ca(source: Path, target: Path) -> None:
    """The second master's data dir starts with the first's CA (certificate and key)."""
    (target / "pki").mkdir(parents=True, mode=0o700)
    for name in ("ca.crt", "ca.key"):
        shutil.copy2(source / "pki" / name, target / "pki" / name)


def namespace(name: str) -> core_pb2.Namespace:
    ns = core_pb2.Namespace()
    ns.metadata.name = name
    return ns


async def mark(master: Running, name: str) -> None:
    async with Client(master.address, timeout=10, credentials=master.admin) as api:
        await api.namespaces.create(namespace(f"only-on-{name}"))


async def serving(api: Client, names: tuple[str, ...]) -> str:
    """Which master the client's calls reach, by its marker."""
    found = []
    for name in names:
        try:
            await api.namespaces.get(f"only-on-{name}")
            found.append(name)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
    assert len(found) == 1, found
    return found[0]


async def test_a_client_given_two_masters_keeps_answering_when_one_stops(tmp_path: Path) -> None:
    async with masters(tmp_path / "a") as (a,):
        share_ca(tmp_path / "a", tmp_path / "b")
        b = await Running(tmp_path / "b").start()
        try:
            # The CA was kept, not made again: one cluster CA for both.
            assert (tmp_path / "b" / "pki" / "ca.crt").read_bytes() == (
                tmp_path / "a" / "pki" / "ca.crt"
            ).read_bytes()
            # Both serving certificates carry the name a list is checked against.
            for name in ("a", "b"):
                info = pki.cert_info((tmp_path / name / "pki" / "server.crt").read_bytes())
                assert set(MASTER_NAMES) <= set(info.dns_names), name
            await mark(a, "a")
            await mark(b, "b")
            by_name = {"a": a, "b": b}
            # A's admin certificate is good on B too: same CA.
            async with Client(f"{a.address},{b.address}", timeout=10, credentials=a.admin) as api:
                first = await serving(api, ("a", "b"))
                other = "b" if first == "a" else "a"

                # Reads keep going while the master in use shuts down: none fails.
                failures: list[BaseException] = []
                stop_reading = asyncio.Event()

                async def read() -> int:
                    count = 0
                    while not stop_reading.is_set():
                        try:
                            await api.namespaces.list()
                            count += 1
                        except grpc.aio.AioRpcError as exc:
                            failures.append(exc)
                    return count

                readers = [asyncio.ensure_future(read()) for _ in range(4)]
                await asyncio.sleep(0.2)
                await by_name[first].stop()
                await asyncio.sleep(0.5)
                stop_reading.set()
                counts = await asyncio.gather(*readers)
                assert not failures, failures
                assert all(counts), counts

                assert await serving(api, ("a", "b")) == other
                listed = {n.metadata.name for n in (await api.namespaces.list()).items}
                assert f"only-on-{other}" in listed and f"only-on-{first}" not in listed
                created = await api.namespaces.create(namespace("after-failover"))
                async with Client(
                    by_name[other].address, timeout=10, credentials=by_name[other].admin
                ) as direct:
                    seen = await direct.namespaces.get("after-failover")
                assert seen.metadata.uid == created.metadata.uid
        finally:
            await b.stop()


async def test_a_client_starts_when_the_first_master_listed_is_down(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with masters(tmp_path / "a") as (a,):
        await mark(a, "a")
        for _ in range(3):  # the list is shuffled: either order must work
            async with Client(f"{dead},{a.address}", timeout=10, credentials=a.admin) as api:
                assert await serving(api, ("a",)) == "a"


async def test_a_watch_resumes_on_the_other_master_without_listing_again(
    tmp_path: Path,
) -> None:
    async with masters(tmp_path / "a") as (a,):
        async with Client(a.address, timeout=10, credentials=a.admin) as direct:
            for index in range(3):
                await direct.namespaces.create(namespace(f"shared-{index}"))
        # B starts with A's history (and CA): a restored backup.
        archive = tmp_path / "a.backup"
        await asyncio.to_thread(backup.backup, tmp_path / "a", archive)
        backup.restore(archive, tmp_path / "b")
        b = await Running(tmp_path / "b").start()
        try:
            await mark(a, "a")
            await mark(b, "b")  # both one write past the shared history: same revision
            revisions = []
            for master in (a, b):
                async with Client(master.address, timeout=10, credentials=master.admin) as api:
                    revisions.append((await api.namespaces.list_page()).resource_version)
            assert revisions[0] == revisions[1], revisions

            by_name = {"a": a, "b": b}
            await watch_across_failover(
                f"{a.address},{b.address}", a.admin, lambda name: by_name[name].stop()
            )
        finally:
            await b.stop()


async def watch_across_failover(
    servers: str, admin: Credentials, stop: Callable[[str], Awaitable[None]]
) -> None:
    """An informer over `servers` (masters "a" and "b" with one history and one
    marker each) goes on after `stop` ends the master it uses, without listing again."""
    async with Client(servers, timeout=10, credentials=admin) as api:
        first = await serving(api, ("a", "b"))
        other = "b" if first == "a" else "a"
        informer: Informer[core_pb2.Namespace] = Informer(api.namespaces)
        events: list[tuple[str, str]] = []
        informer.add_handler(
            lambda kind, old, new: events.append((kind, (new or old).metadata.name))
        )
        task = asyncio.ensure_future(informer.run())
        try:
            await asyncio.wait_for(informer.synced.wait(), 10)
            assert informer.get("", f"only-on-{first}") is not None
            events.clear()
            resumed_from = informer.resource_version

            await stop(first)
            await api.namespaces.create(namespace("after-failover"))
            for _ in range(100):
                if ("ADDED", "after-failover") in events:
                    break
                await asyncio.sleep(0.1)
            # Only the new object: a re-list would have dropped only-on-FIRST
            # (DELETED) and brought only-on-OTHER (ADDED).
            assert events == [("ADDED", "after-failover")], events
            assert int(informer.resource_version) > int(resumed_from)
            assert informer.get("", f"only-on-{first}") is not None
            assert informer.get("", f"only-on-{other}") is None
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_a_node_joins_and_renews_through_a_list_whose_first_master_is_dead(
    tmp_path: Path,
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with masters(tmp_path / "a") as (a,):
        token, _ = await a.master.tokens.issue(ttl=600, description="list join test")
        assert a.master.ca is not None
        cred_dir = CredentialDir(tmp_path / "node-pki", "kubelet")
        credentials = await bootstrap.load_or_join(
            cred_dir, role="node", node_name="listed-1",
            join_address=f"{dead},{a.join_address}", pin=a.master.ca.pin, token=token,
            addresses=["127.0.0.1"],
        )  # fmt: skip
        assert pki.cert_info(credentials.cert_pem).common_name == "system:node:listed-1"
        renewer = bootstrap.CertificateRenewer(
            f"{dead},{a.address}", cred_dir, "node", "listed-1", ["127.0.0.1"]
        )
        renewed = await renewer.renew_now()
        assert renewed.cert_pem != credentials.cert_pem
        async with Client(f"{dead},{a.address}", timeout=10, credentials=renewed) as api:
            node = core_pb2.Node()
            node.metadata.name = "listed-1"
            await api.nodes.create(node)


# -- the CLI, against master processes --------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBELING), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def create_node(proc: MasterProcess, name: str) -> None:
    async def create() -> None:
        async with Client.from_config(proc.admin_conf, timeout=10) as api:
            node = core_pb2.Node()
            node.metadata.name = name
            await api.nodes.create(node)

    asyncio.run(create())


@pytest.fixture
def two_masters(tmp_path: Path) -> Any:
    a = MasterProcess(tmp_path / "a", None, "--controllers=", tls=True)
    b = MasterProcess(tmp_path / "b", None, "--controllers=", tls=True)
    try:
        a.start()
        share_ca(tmp_path / "a", tmp_path / "b")
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


def test_the_cli_fails_over_between_masters(two_masters: Any, tmp_path: Path) -> None:
    a, b = two_masters
    create_node(a, "node-on-a")
    create_node(b, "node-on-b")
    servers = f"{a.address},{b.address}"
    conf = str(a.admin_conf)

    got = run_cli("--config", conf, "--server", servers, "get", "nodes")
    assert got.returncode == 0, got.stderr
    on = "a" if "node-on-a" in got.stdout else "b"
    assert (f"node-on-{'b' if on == 'a' else 'a'}" in got.stdout) is False, got.stdout
    # The environment and a config file take the same list.
    env = run_cli("--config", conf, "get", "nodes", env={"KUBELING_SERVER": servers})
    assert env.returncode == 0 and "node-on-" in env.stdout, env.stderr
    listed = tmp_path / "listed.conf"
    listed.write_text(
        a.admin_conf.read_text().replace(f"server: {a.address}", f"server: {servers}")
    )
    assert f"server: {servers}" in listed.read_text()
    from_file = run_cli("--config", str(listed), "get", "nodes")
    assert from_file.returncode == 0 and "node-on-" in from_file.stdout, from_file.stderr

    # kill -9 of either master: the CLI answers from the other, every time.
    (a if on == "a" else b).kill9()
    survivor = "b" if on == "a" else "a"
    for _ in range(3):
        after = run_cli("--config", conf, "--server", servers, "get", "nodes")
        assert after.returncode == 0, after.stderr
        assert f"node-on-{survivor}" in after.stdout and f"node-on-{on}" not in after.stdout

    # With every master gone: one line naming the list, no traceback.
    (b if on == "a" else a).kill9()
    down = run_cli("--config", conf, "--server", servers, "get", "nodes")
    assert down.returncode == 1
    assert f"cannot reach the kubeling server at {servers}" in down.stderr, down.stderr
    assert "Traceback" not in down.stderr

    bad = run_cli("--config", conf, "--server", f"{a.address},,{b.address}", "get", "nodes")
    assert bad.returncode != 0
    assert "item 2 of the list is empty" in bad.stderr
    assert "Traceback" not in bad.stderr


async def test_a_watch_survives_a_kill_9_of_its_master(tmp_path: Path) -> None:
    a = MasterProcess(tmp_path / "a", None, "--controllers=", tls=True)
    b = MasterProcess(tmp_path / "b", None, "--controllers=", tls=True)
    try:
        await asyncio.to_thread(a.start)
        admin = read_config(a.admin_conf).credentials
        assert admin is not None
        async with Client(a.address, timeout=10, credentials=admin) as direct:
            for index in range(3):
                await direct.namespaces.create(namespace(f"shared-{index}"))
            # Taken while A runs (an online backup), restored as B's data dir.
            archive = tmp_path / "a.backup"
            await asyncio.to_thread(backup.backup, tmp_path / "a", archive)
            backup.restore(archive, tmp_path / "b")
            await asyncio.to_thread(b.start)
            await direct.namespaces.create(namespace("only-on-a"))
        async with Client(b.address, timeout=10, credentials=admin) as direct:
            await direct.namespaces.create(namespace("only-on-b"))
        revisions = []
        for proc in (a, b):
            async with Client(proc.address, timeout=10, credentials=admin) as api:
                revisions.append((await api.namespaces.list_page()).resource_version)
        assert revisions[0] == revisions[1], revisions

        async def kill(name: str) -> None:
            await asyncio.to_thread((a if name == "a" else b).kill9)

        await watch_across_failover(f"{a.address},{b.address}", admin, kill)
    finally:
        a.stop()
        b.stop()
