"""Backups of a master on etcd, end to end over TLS as in production: etcd members
with certificates from the cluster CA (master/etcd_pki.py), a TLS master whose etcd
client certificate it makes itself. A backup taken while the master writes restores
every object into a fresh SQLite master, and into an empty prefix of an etcd for a
fresh etcd master; the archive also holds etcd's own snapshot."""

from __future__ import annotations

import asyncio
import tarfile
from pathlib import Path

import pytest

from kubeling.client import Client
from kubeling.master import backup, etcd_pki
from kubeling.master.server import Master, MasterConfig, make_store
from kubeling.master.store.etcd import EtcdStore, EtcdStoreError
from kubeling.v1 import core_pb2
from tests.support.etcd import EtcdCluster, EtcdTlsFiles, running_etcd


def _service(name: str) -> core_pb2.Service:
    service = core_pb2.Service()
    service.metadata.name = name
    service.metadata.namespace = "default"
    service.spec.ports.add(port=80, protocol="TCP")
    return service


async def _state(api: Client) -> set[tuple[str, str]]:
    services = (await api.services.list("")).items
    return {(s.metadata.name, s.spec.cluster_ip) for s in services}


def _config(data_dir: Path, etcd: EtcdCluster | None, prefix: str) -> MasterConfig:
    return MasterConfig(
        listen="127.0.0.1:0",
        join_listen="",
        data_dir=data_dir,
        controllers=set(),
        store=f"etcd://{etcd.endpoints}" if etcd is not None else "sqlite",
        etcd_prefix=prefix,
    )


def _etcd_factory(config: MasterConfig) -> EtcdStore:
    store = make_store(config)
    assert isinstance(store, EtcdStore)
    return store


async def test_an_etcd_masters_backup_restores_into_sqlite_and_into_etcd(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    old = tmp_path / "old"
    certs = tmp_path / "etcd-certs"
    etcd_pki.issue_etcd_member(old, "etcd0", ["127.0.0.1"], certs / "etcd0")
    tls = EtcdTlsFiles.issued_in(certs)
    archive = tmp_path / "cluster.backup"
    with running_etcd(tmp_path_factory.mktemp("etcd-tls"), tls=tls) as etcd:
        source = Master(_config(old, etcd, "/prod"))
        port = await source.start()
        assert source.ca is not None
        admin = source.ca.admin_credentials()
        try:
            async with Client(f"127.0.0.1:{port}", credentials=admin) as api:
                for index in range(20):
                    await api.services.create(_service(f"svc-{index}"))

                async def keep_writing() -> None:
                    for index in range(20, 40):
                        await api.services.create(_service(f"svc-{index}"))

                writer = asyncio.ensure_future(keep_writing())
                factory = _config(old, etcd, "/prod")
                info = await asyncio.to_thread(
                    backup.backup, old, archive, lambda: _etcd_factory(factory)
                )
                await writer
                everything = await _state(api)
        finally:
            await source.stop()
        assert info.store == "etcd"
        with tarfile.open(archive) as members:
            snapshot = members.getmember(backup.ETCD_SNAPSHOT)
            assert snapshot.size > 0 and snapshot.mode == 0o600

        # Into a fresh etcd prefix, for a fresh master on etcd (same CA: its
        # certificates work; the restored data dir makes its etcd client cert).
        on_etcd = tmp_path / "on-etcd"
        restored = _config(on_etcd, etcd, "/restored")
        await asyncio.to_thread(backup.restore, archive, on_etcd, lambda: _etcd_factory(restored))
        assert not (on_etcd / "state.db").exists()
        master = Master(restored)
        port = await master.start()
        try:
            async with Client(f"127.0.0.1:{port}", credentials=admin) as api:
                from_etcd = await _state(api)
        finally:
            await master.stop()
        # Restoring twice into one prefix is refused, nothing written.
        with pytest.raises(EtcdStoreError, match="already holds"):
            await asyncio.to_thread(
                backup.restore, archive, tmp_path / "again", lambda: _etcd_factory(restored)
            )

    # Into SQLite, for a fresh single master.
    on_sqlite = tmp_path / "on-sqlite"
    backup.restore(archive, on_sqlite)
    master = Master(_config(on_sqlite, None, ""))
    port = await master.start()
    try:
        async with Client(f"127.0.0.1:{port}", credentials=admin) as api:
            from_sqlite = await _state(api)
    finally:
        await master.stop()

    first = {(f"svc-{i}") for i in range(20)}
    for restored_state in (from_etcd, from_sqlite):
        names = {name for name, _ in restored_state}
        assert first <= names  # everything acknowledged before the backup began
        assert restored_state <= everything  # same ClusterIPs, nothing invented
    assert from_etcd == from_sqlite
