"""`kubeling-master backup` / `restore` (master/backup.py): a backup taken while a TLS
master runs and writes, restored into a fresh data directory, brings back every
object at the same revision and the same CA (the old admin credential still works);
restore never overwrites a store and refuses archives with anything unexpected in them."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sqlite3
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from kubeling.client import Client
from kubeling.common import pki
from kubeling.master import backup
from kubeling.master.server import Master, MasterConfig
from kubeling.v1 import core_pb2


def _master(data_dir: Path) -> Master:
    return Master(
        MasterConfig(listen="127.0.0.1:0", join_listen="", data_dir=data_dir, controllers=set())
    )


def _service(name: str) -> core_pb2.Service:
    service = core_pb2.Service()
    service.metadata.name = name
    service.metadata.namespace = "default"
    service.spec.ports.add(port=80, protocol="TCP")
    return service


async def _names(api: Client) -> list[tuple[str, str, str]]:
    services = (await api.services.list("")).items
    namespaces = (await api.namespaces.list("")).items
    return sorted(
        [("svc", s.metadata.name, s.spec.cluster_ip) for s in services]
        + [("ns", n.metadata.name, "") for n in namespaces]
    )


async def test_a_backup_taken_while_writing_restores_every_object(tmp_path: Path) -> None:
    source = _master(tmp_path / "old")
    port = await source.start()
    assert source.ca is not None
    admin = source.ca.admin_credentials()
    pin = source.ca.pin
    archive = tmp_path / "cluster.backup"
    try:
        async with Client(f"127.0.0.1:{port}", credentials=admin) as api:
            for index in range(20):
                await api.services.create(_service(f"svc-{index}"))

            # Writes go on while the backup is taken: the copy is one consistent snapshot.
            async def keep_writing() -> None:
                for index in range(20, 40):
                    await api.services.create(_service(f"svc-{index}"))

            writer = asyncio.ensure_future(keep_writing())
            info = await asyncio.to_thread(backup.backup, tmp_path / "old", archive)
            await writer
            assert info.objects >= 20 + 3  # the services and the system namespaces
            expected_at_backup = info.revision
            wanted = await _names(api)
    finally:
        await source.stop()
    assert stat.S_IMODE(os.stat(archive).st_mode) == 0o600

    restored_dir = tmp_path / "new"
    restored_info = backup.restore(archive, restored_dir)
    assert restored_info.revision == expected_at_backup
    assert stat.S_IMODE(os.stat(restored_dir / "pki" / "ca.key").st_mode) == 0o600

    restored = _master(restored_dir)
    port = await restored.start()
    try:
        assert restored.ca is not None and restored.ca.pin == pin  # same CA: nodes keep working
        async with Client(f"127.0.0.1:{port}", credentials=admin) as api:
            listed = await api.services.list("")
            assert int(listed.resource_version) == expected_at_backup
            have = await _names(api)
            # Everything up to the snapshot, with its ClusterIP; nothing invented.
            assert set(have) <= set(wanted)
            names = {name for kind, name, _ in have if kind == "svc"}
            assert {f"svc-{i}" for i in range(20)} <= names
            # Exactly the Services the restored database holds (besides them it also
            # holds namespaces and internal records such as ClusterIP allocations).
            with contextlib.closing(sqlite3.connect(restored_dir / "state.db")) as db:
                (stored,) = db.execute(
                    "SELECT COUNT(*) FROM objects WHERE key LIKE '/services/%'"
                ).fetchone()
            assert len(names) == stored
    finally:
        await restored.stop()


def test_restore_never_overwrites_a_store(tmp_path: Path) -> None:
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / "state.db").write_bytes(b"precious")
    archive = tmp_path / "b.backup"
    archive.write_bytes(b"whatever")
    with pytest.raises(backup.BackupError, match="already holds a store"):
        backup.restore(archive, tmp_path / "live")
    assert (tmp_path / "live" / "state.db").read_bytes() == b"precious"


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "pki/../../x", "other.db"])
def test_an_archive_with_unexpected_members_is_refused(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "evil.backup"
    with tarfile.open(archive, "w:gz") as tar:
        member = tarfile.TarInfo(name)
        member.size = 1
        tar.addfile(member, io.BytesIO(b"x"))
    with pytest.raises(backup.BackupError, match="unexpected member"):
        backup.restore(archive, tmp_path / "dir")
    assert not (tmp_path / "dir" / "state.db").exists()
    assert not (tmp_path / "escape").exists()


def test_garbage_is_not_a_backup(tmp_path: Path) -> None:
    archive = tmp_path / "junk.backup"
    archive.write_bytes(os.urandom(512))
    with pytest.raises(backup.BackupError, match="not a readable kubeling backup"):
        backup.restore(archive, tmp_path / "dir")


def test_the_master_command_backs_up_and_restores(tmp_path: Path) -> None:
    async def first_start() -> None:
        source = _master(tmp_path / "old")
        await source.start()
        await source.stop()

    asyncio.run(first_start())
    run = [sys.executable, "-m", "kubeling.master.main"]
    out = tmp_path / "b.backup"
    done = subprocess.run(
        [*run, "backup", "--data-dir", str(tmp_path / "old"), "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "mode 0600" in done.stdout
    done = subprocess.run(
        [*run, "restore", str(out), "--data-dir", str(tmp_path / "new")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "new" / "state.db").exists()
    assert pki.ca_pin((tmp_path / "new" / "pki" / "ca.crt").read_bytes()) == pki.ca_pin(
        (tmp_path / "old" / "pki" / "ca.crt").read_bytes()
    )
    again = subprocess.run(
        [*run, "restore", str(out), "--data-dir", str(tmp_path / "new")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 1 and "already holds a store" in again.stderr
