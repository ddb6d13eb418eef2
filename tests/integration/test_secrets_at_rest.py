"""Secrets encrypted at rest (master/codec.py): the bytes the SQLite file, etcd and
a backup hold carry no Secret value in the clear; masters sharing the cluster CA
share the key; a restored backup decrypts; an old plaintext value still reads;
another cluster's key is a clear error, not garbage."""

from __future__ import annotations

import shutil
import stat
import uuid
from pathlib import Path

import grpc
import pytest

from kubeling.api.kinds import SECRET
from kubeling.client import Client, ResourceClient
from kubeling.etcdpb import etcd_pb2 as pb
from kubeling.etcdpb import etcd_pb2_grpc as pb_grpc
from kubeling.master import backup, cluster_ca
from kubeling.master.codec import (
    ENCRYPTION_PREFIX,
    LOCAL_KEY_FILE,
    ProtoCodec,
    SecretDecryptionError,
)
from kubeling.master.store.etcd import EtcdStore
from kubeling.master.store.sqlite import SqliteStore
from kubeling.v1 import core_pb2
from tests.support.etcd import running_etcd
from tests.support.processes import running_master

PLAIN_VALUE = b"correct-horse-battery-staple"
KEY = "/secrets/default/db"


def secret(value: bytes = PLAIN_VALUE) -> core_pb2.Secret:
    obj = core_pb2.Secret(type="Opaque")
    obj.metadata.name = "db"
    obj.metadata.namespace = "default"
    obj.data["password"] = value
    return obj


def config_map() -> core_pb2.ConfigMap:
    obj = core_pb2.ConfigMap()
    obj.metadata.name = "app"
    obj.metadata.namespace = "default"
    obj.data["greeting"] = "plain-config-value"
    return obj


def raw_files(data_dir: Path) -> bytes:
    """Every byte SQLite keeps for the store: the database and its WAL."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob("state.db*")))


def with_ca(data_dir: Path) -> Path:
    cluster_ca.load_or_create(data_dir, listen=())
    return data_dir


async def write(data_dir: Path, codec: ProtoCodec, *objs: tuple[str, object]) -> None:
    store = SqliteStore(data_dir / "state.db", codec, history=100)
    await store.open()
    try:
        for key, obj in objs:
            await store.create(key, obj)
    finally:
        await store.close()


async def read(data_dir: Path, codec: ProtoCodec, key: str = KEY) -> core_pb2.Secret:
    store = SqliteStore(data_dir / "state.db", codec, history=100)
    await store.open()
    try:
        entry = store.get(key)
        assert entry is not None
        return entry.value  # type: ignore[no-any-return]
    finally:
        await store.close()


async def test_sqlite_holds_no_secret_in_the_clear_without_tls(tmp_path: Path) -> None:
    codec = ProtoCodec.for_master(tmp_path, tls=False)
    await write(tmp_path, codec, (KEY, secret()), ("/configmaps/default/app", config_map()))
    raw = raw_files(tmp_path)
    # The file is readable as it is: the ConfigMap's value is there, the Secret's not.
    assert b"plain-config-value" in raw
    assert PLAIN_VALUE not in raw
    assert ENCRYPTION_PREFIX + b"local:" in raw
    key_file = tmp_path / LOCAL_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # Another master process on the same directory reads it back.
    again = await read(tmp_path, ProtoCodec.for_master(tmp_path, tls=False))
    assert again.data["password"] == PLAIN_VALUE


async def test_masters_sharing_the_ca_share_the_key(tmp_path: Path) -> None:
    first, second = with_ca(tmp_path / "m1"), tmp_path / "m2"
    (second / "pki").mkdir(parents=True)
    for name in ("ca.crt", "ca.key"):
        shutil.copy(first / "pki" / name, second / "pki" / name)
    await write(first, ProtoCodec.for_master(first, tls=True), (KEY, secret()))
    raw = raw_files(first)
    assert PLAIN_VALUE not in raw and ENCRYPTION_PREFIX + b"ca:" in raw
    assert not (first / LOCAL_KEY_FILE).exists()  # with a CA, no key file is made
    shutil.copy(first / "state.db", second / "state.db")
    for wal in first.glob("state.db-*"):
        shutil.copy(wal, second / wal.name)
    again = await read(second, ProtoCodec.for_master(second, tls=True))
    assert again.data["password"] == PLAIN_VALUE


async def test_another_clusters_key_is_a_clear_error(tmp_path: Path) -> None:
    mine, theirs = with_ca(tmp_path / "mine"), with_ca(tmp_path / "theirs")
    await write(mine, ProtoCodec.for_master(mine, tls=True), (KEY, secret()))
    with pytest.raises(SecretDecryptionError, match="another cluster's key") as raised:
        await read(mine, ProtoCodec.for_master(theirs, tls=True))
    assert KEY in str(raised.value)
    # Without any key at all it says so too.
    with pytest.raises(SecretDecryptionError, match="no key"):
        await read(mine, ProtoCodec())


async def test_plaintext_secret_from_before_still_reads(tmp_path: Path) -> None:
    await write(tmp_path, ProtoCodec(), (KEY, secret()))
    assert PLAIN_VALUE in raw_files(tmp_path)
    again = await read(tmp_path, ProtoCodec.for_master(tmp_path, tls=False))
    assert again.data["password"] == PLAIN_VALUE


async def test_value_moved_to_another_name_does_not_decrypt(tmp_path: Path) -> None:
    codec = ProtoCodec.for_master(tmp_path, tls=False)
    data = codec.encode(secret())
    assert codec.decode(KEY, data).data["password"] == PLAIN_VALUE  # type: ignore[attr-defined]
    with pytest.raises(SecretDecryptionError, match="/secrets/default/other"):
        codec.decode("/secrets/default/other", data)


async def test_restored_backup_decrypts(tmp_path: Path) -> None:
    source, target = with_ca(tmp_path / "source"), tmp_path / "restored"
    await write(source, ProtoCodec.for_master(source, tls=True), (KEY, secret()))
    archive = tmp_path / "backup.tar.gz"
    await _in_thread(backup.backup, source, archive)
    await _in_thread(backup.restore, archive, target)
    assert PLAIN_VALUE not in raw_files(target)
    again = await read(target, ProtoCodec.for_master(target, tls=True))
    assert again.data["password"] == PLAIN_VALUE


async def _in_thread(fn: object, *args: object) -> object:
    import asyncio

    return await asyncio.to_thread(fn, *args)  # type: ignore[arg-type]


async def test_etcd_value_is_encrypted(tmp_path: Path) -> None:
    with running_etcd(tmp_path / "etcd") as etcd:
        prefix = f"/k-{uuid.uuid4().hex[:6]}"
        codec = ProtoCodec.for_master(tmp_path, tls=False)
        store = EtcdStore(etcd.endpoints.split(","), codec, prefix=prefix, compaction_interval=0)
        await store.open()
        try:
            await store.create(KEY, secret())
        finally:
            await store.close()
        async with grpc.aio.insecure_channel(etcd.endpoint(0)) as channel:
            reply = await pb_grpc.KVStub(channel).Range(
                pb.RangeRequest(key=(prefix + KEY).encode())
            )
        (kv,) = reply.kvs
        assert kv.value.startswith(ENCRYPTION_PREFIX)
        assert PLAIN_VALUE not in kv.value
        reader = EtcdStore(
            etcd.endpoints.split(","),
            ProtoCodec.for_master(tmp_path, tls=False),
            prefix=prefix,
            compaction_interval=0,
        )
        await reader.open()
        try:
            entry = reader.get(KEY)
            assert entry is not None
            assert entry.value.data["password"] == PLAIN_VALUE
        finally:
            await reader.close()


async def test_a_running_masters_store_file_has_no_secret_in_the_clear(tmp_path: Path) -> None:
    with running_master(tmp_path, "--controllers=") as master:
        async with Client(master.address, timeout=10) as api:
            secrets = ResourceClient(SECRET, api.channel, 10)
            await secrets.create(secret())
            assert (await secrets.get("db", "default")).data["password"] == PLAIN_VALUE
    assert PLAIN_VALUE not in raw_files(tmp_path)
