"""`kubeling-master backup` and `kubeling-master restore`: a master's state in one file.

A backup is a gzip'd tar, mode 0600 (it holds the CA key), of everything a master
needs to come back as the same cluster:

- `state.db`: the SQLite store, copied with SQLite's online backup API from a
  read-only connection, so it is one consistent snapshot even while the master
  runs and writes (WAL readers never block the writer);
- `pki/`: the cluster CA and the master's certificates (nodes and users keep
  working against a restored master: same CA);
- `bootstrap-tokens.json` / `.key`: join tokens of a master from before tokens
  moved into the store, not imported yet (a restored master imports them;
  tokens, like Service allocations, are otherwise records in the store);
- `backup.json`: format version, store revision, object count, time, backend.

A master on etcd (`--store etcd://...`) is backed up the same way, so one archive
restores into either backend: `state.db` is then written from every object under
the cluster's prefix read at one etcd revision (a consistent cut while masters keep
writing), and `etcd-snapshot.db` beside it is etcd's own snapshot of its whole
database (Maintenance/Snapshot), for `etcdctl snapshot restore` when a whole etcd
cluster is lost.

Restore unpacks it into an empty data directory (never over a live one), accepts
only the members above (no links, no paths outside), and checks the database's
integrity before it says done. Start `kubeling-master --data-dir DIR` on it; with
`--store etcd://...` the objects are written into that etcd instead (its prefix must
be empty) and the master is started with the same `--store`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubeling.master.store.etcd import EtcdStore

FORMAT = 1
STATE_DB = "state.db"
ETCD_SNAPSHOT = "etcd-snapshot.db"
MANIFEST = "backup.json"
# Old token files not imported yet, and an --insecure master's Secret encryption key
# (with TLS the key is derived from pki/ca.key).
_TOKEN_FILES = ("bootstrap-tokens.json", "bootstrap-tokens.key", "secrets-encryption.key")
_PKI = "pki"


class BackupError(Exception):
    """A backup or restore that cannot be done (the message says why)."""


@dataclass(frozen=True)
class BackupInfo:
    format: int
    revision: int
    objects: int
    created: float
    store: str = "sqlite"  # the backend it was taken from


def _snapshot(db: Path, into: Path) -> BackupInfo:
    if not db.exists():
        raise BackupError(f"no store at {db} (is --data-dir the master's?)")
    source = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    target = sqlite3.connect(into)
    try:
        source.backup(target)  # all pages in one step: one read transaction
        revision = target.execute("SELECT value FROM meta WHERE name='rev'").fetchone()
        objects = target.execute("SELECT COUNT(*) FROM objects").fetchone()[0]
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy {db}: {exc}") from None
    finally:
        target.close()
        source.close()
    return BackupInfo(FORMAT, int(revision[0]) if revision else 0, int(objects), time.time())


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    member.mode = 0o600
    member.mtime = int(time.time())
    archive.addfile(member, io.BytesIO(data))


async def _from_etcd(store: EtcdStore, scratch: Path) -> BackupInfo:
    """state.db from the objects in etcd, and etcd's own snapshot, into `scratch`."""
    from kubeling.master.store.sqlite import write_database

    try:
        objects, revision = await store.export()
        with (scratch / ETCD_SNAPSHOT).open("wb") as snapshot:
            await store.snapshot(snapshot.write)
    finally:
        await store.close()
    write_database(scratch / STATE_DB, objects, revision)
    return BackupInfo(FORMAT, revision, len(objects), time.time(), "etcd")


def backup(data_dir: Path, out: Path, etcd: Callable[[], EtcdStore] | None = None) -> BackupInfo:
    """Write the backup of the master in `data_dir` (whose objects are in the etcd
    `etcd` makes, when given) to `out` (0600, replaced atomically)."""
    with tempfile.TemporaryDirectory(prefix="kubeling-backup-") as scratch:
        copy = Path(scratch) / STATE_DB
        if etcd is None:
            info = _snapshot(data_dir / STATE_DB, copy)
        else:
            import asyncio

            info = asyncio.run(_from_etcd(etcd(), Path(scratch)))
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            _add_bytes(archive, MANIFEST, json.dumps(asdict(info)).encode())
            _add_bytes(archive, STATE_DB, copy.read_bytes())
            if etcd is not None:
                archive.add(Path(scratch) / ETCD_SNAPSHOT, ETCD_SNAPSHOT, filter=_private)
            pki = data_dir / _PKI
            for path in sorted(pki.glob("*")) if pki.is_dir() else []:
                if path.is_file() and not path.is_symlink():
                    _add_bytes(archive, f"{_PKI}/{path.name}", path.read_bytes())
            for name in _TOKEN_FILES:
                if (data_dir / name).is_file():
                    _add_bytes(archive, name, (data_dir / name).read_bytes())
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        _write_private(tmp, buffer.getvalue())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return info


def _private(member: tarfile.TarInfo) -> tarfile.TarInfo:
    member.mode = 0o600
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


def _allowed(name: str) -> bool:
    if name in (MANIFEST, STATE_DB, ETCD_SNAPSHOT, *_TOKEN_FILES):
        return True
    folder, _, base = name.partition("/")
    return folder == _PKI and bool(base) and "/" not in base and base not in (".", "..")


def _members(archive_path: Path) -> dict[str, bytes]:
    """The backup's files by name; BackupError for anything unexpected in it."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(archive_path, mode="r:gz") as archive:
            for member in archive.getmembers():
                if not member.isfile() or not _allowed(member.name):
                    raise BackupError(f"{archive_path}: unexpected member {member.name!r}; refused")
                extracted = archive.extractfile(member)
                assert extracted is not None
                files[member.name] = extracted.read()
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        raise BackupError(f"{archive_path} is not a readable kubeling backup: {exc}") from None
    return files


def restore(
    archive_path: Path, data_dir: Path, etcd: Callable[[], EtcdStore] | None = None
) -> BackupInfo:
    """Unpack a backup into `data_dir`, which must hold no store yet; with `etcd`,
    write its objects into the etcd it makes (once the CA is in place: its client
    certificate comes from it), under an empty prefix, instead of a state.db."""
    if (data_dir / STATE_DB).exists():
        raise BackupError(
            f"{data_dir} already holds a store: restore into a new, empty data directory"
        )
    files = _members(archive_path)
    if MANIFEST not in files or STATE_DB not in files:
        raise BackupError(f"{archive_path} is not a kubeling backup (no {MANIFEST} or {STATE_DB})")
    try:
        info = BackupInfo(**json.loads(files.pop(MANIFEST)))
    except (ValueError, TypeError) as exc:
        raise BackupError(f"{archive_path}: unreadable {MANIFEST}: {exc}") from None
    if info.format != FORMAT:
        raise BackupError(
            f"{archive_path}: backup format {info.format}, this master reads {FORMAT}"
        )
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (data_dir / _PKI).mkdir(mode=0o700, exist_ok=True)
    # The store last: a data directory with a store is a restored one.
    database = files.pop(STATE_DB)
    files.pop(ETCD_SNAPSHOT, None)  # for etcdctl snapshot restore, not for a master
    for name, data in files.items():
        _write_private(data_dir / name, data)
    staged = data_dir / f".{STATE_DB}.restore"
    _write_private(staged, database)
    check = sqlite3.connect(staged)
    try:
        verdict = check.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.Error as exc:
        verdict = str(exc)
    finally:
        check.close()
    if verdict != "ok":
        staged.unlink(missing_ok=True)
        raise BackupError(f"{archive_path}: the store in it is damaged ({verdict})")
    if etcd is not None:
        try:
            import asyncio

            asyncio.run(_into_etcd(staged, etcd()))
        finally:
            staged.unlink(missing_ok=True)
        return info
    os.replace(staged, data_dir / STATE_DB)
    return info


async def _into_etcd(database: Path, store: EtcdStore) -> None:
    db = sqlite3.connect(database)
    try:
        items = [(str(k), bytes(v)) for k, v in db.execute("SELECT key, value FROM objects")]
    finally:
        db.close()
    try:
        await store.import_values(items)
    finally:
        await store.close()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def main(argv: list[str]) -> int:
    """`kubeling-master backup --data-dir DIR --out FILE` or
    `kubeling-master restore FILE --data-dir DIR`."""
    from kubeling.master.main import add_store_arguments, default_data_dir, store_config
    from kubeling.master.server import make_store
    from kubeling.master.store.etcd import EtcdStore, EtcdStoreError

    parser = argparse.ArgumentParser(prog="kubeling-master", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    save = commands.add_parser("backup", help="write a backup of a (running) master")
    save.add_argument("--data-dir", type=Path, default=None)
    save.add_argument("--out", type=Path, required=True)
    load = commands.add_parser("restore", help="unpack a backup into a new data directory")
    load.add_argument("file", type=Path)
    load.add_argument("--data-dir", type=Path, default=None)
    for command in (save, load):
        add_store_arguments(command)
        command.add_argument(
            "--insecure", action="store_true", help="plaintext to an etcd on loopback"
        )
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    etcd: Callable[[], EtcdStore] | None = None
    if args.store not in ("", "sqlite"):

        def etcd() -> EtcdStore:
            store = make_store(store_config(args, data_dir, tls=not args.insecure))
            assert isinstance(store, EtcdStore)
            return store

    try:
        if args.command == "backup":
            info = backup(data_dir, args.out, etcd)
            print(f"backup of {data_dir} written to {args.out} (mode 0600: it holds the CA key): "
                  f"revision {info.revision}, {info.objects} objects")  # fmt: skip
        else:
            info = restore(args.file, data_dir, etcd)
            print(f"restored revision {info.revision} ({info.objects} objects) into {data_dir}; "
                  f"start it with: kubeling-master --data-dir {data_dir} ...")  # fmt: skip
    except (BackupError, OSError, EtcdStoreError) as exc:
        print(f"kubeling-master {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0
