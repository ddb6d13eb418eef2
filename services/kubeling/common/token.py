"""Bootstrap tokens (kubeadm's): what a new node presents to get its certificate.

A token is `ID.SECRET` (`[a-z0-9]{6}.[a-z0-9]{16}`) with an expiry (default 24 h)
and a description. Tokens are made, listed and deleted through `kubeling.v1.Tokens`
(master/tokens.py, `kubeling token ...`, admins only). A joining kubelet or proxy
sends one in `Certificates/Join` (master/certificates.py) and gets a certificate;
from then on its certificate authenticates it, so an expired token does not stop
a restart.

Where they live: in the cluster's store, one internal record per token
(`/bootstraptokens/ID`, protos/kubeling/v1/internal.proto), so every master
sharing the store accepts every token, whichever master made it. Internal
records are no API kind: no List/Watch/Get serves them. `TokenStore` reaches the
store through `TokenRecords` (master/tokens.py implements it over the Store), so
this shared module does not depend on the master.

What is kept of a secret: its plain SHA-256, compared in constant time. The
single-master version keyed the hash (HMAC) with a key in a separate file so a
copy of the token list alone revealed nothing; in a shared store the key would
have to live in the same store, and in the same backups, as the hashes, so it
would protect nothing, and it would need its own create-once record and race.
A secret is 16 characters drawn by `secrets` from 36 (82 bits): no list of
SHA-256 hashes of such secrets can be searched, keyed or not.

Upgrading: a master whose data directory still holds `bootstrap-tokens.json`
(and `.key`) imports those tokens into the store (each created only if its ID is
free, so a second import changes nothing) and renames both files to `*.imported`,
so a token deleted later does not come back at the next start. An imported token
keeps its HMAC hash and carries the old key in its record (it is no more secret
there than the plain hashes are). Until imported (`import_legacy`, run by the
first write or by the master at start), this master accepts and lists them too.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kubeling.v1 import internal_pb2

DEFAULT_TTL = 24 * 3600.0
TOKEN_RE = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
ID_RE = re.compile(r"^[a-z0-9]{6}$")
_ALPHABET = string.ascii_lowercase + string.digits
# Expired tokens are kept this long (to say "expired" rather than "unknown"), then dropped.
_KEEP_EXPIRED = 7 * 24 * 3600.0
# A master's token files from before tokens moved into the store, and the suffix
# they get once imported.
LEGACY_FILES = ("bootstrap-tokens.json", "bootstrap-tokens.key")
IMPORTED = ".imported"
_HOW_TO_JOIN = (
    "give the kubelet a bootstrap token with --token-file FILE or KUBELING_TOKEN "
    "(make one on the master: kubeling token create)"
)


class TokenRefused(Exception):
    """Why a presented token does not allow joining (the message says which)."""


def generate() -> str:
    def pick(n: int) -> str:
        return "".join(secrets.choice(_ALPHABET) for _ in range(n))

    return f"{pick(6)}.{pick(16)}"


def split(token: str) -> tuple[str, str]:
    """(ID, SECRET); ValueError when `token` is not of kubeadm's shape."""
    match = TOKEN_RE.match(token)
    if match is None:
        raise ValueError(
            "a bootstrap token looks like abcdef.0123456789abcdef ([a-z0-9]{6}.[a-z0-9]{16})"
        )
    return match.group(1), match.group(2)


def read_token_file(path: Path) -> str:
    """The token in `path` (surrounding whitespace ignored); ValueError if malformed."""
    token = path.read_text().strip()
    split(token)
    return token


def write_private(path: Path, data: str) -> None:
    """Write `data` to `path` with mode 0600 from the start, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class StoredToken:
    id: str
    hash: str  # hex SHA-256(secret), or HMAC-SHA256(hmac_key, secret) if imported
    description: str
    created: float  # unix seconds
    expires: float  # unix seconds; 0: never
    hmac_key: bytes = b""  # only tokens imported from a bootstrap-tokens.json

    def expired(self, now: float) -> bool:
        return self.expires != 0 and now >= self.expires

    def hash_of(self, secret: str) -> str:
        if self.hmac_key:
            return hmac.new(self.hmac_key, secret.encode(), hashlib.sha256).hexdigest()
        return hashlib.sha256(secret.encode()).hexdigest()

    def record(self) -> internal_pb2.BootstrapTokenRecord:
        record = internal_pb2.BootstrapTokenRecord(
            hash=self.hash,
            description=self.description,
            created=self.created,
            expires=self.expires,
            hmac_key=self.hmac_key,
        )
        record.metadata.name = self.id
        return record

    @classmethod
    def of(cls, record: internal_pb2.BootstrapTokenRecord) -> StoredToken:
        return cls(
            record.metadata.name,
            record.hash,
            record.description,
            record.created,
            record.expires,
            record.hmac_key,
        )


class TokenRecords(Protocol):
    """The shared store's token records, by ID (master/tokens.py: StoreTokenRecords).
    Reads come from the store's watch cache; writes are the store's."""

    def get(self, token_id: str) -> internal_pb2.BootstrapTokenRecord | None: ...

    def all(self) -> list[internal_pb2.BootstrapTokenRecord]: ...

    async def create(self, record: internal_pb2.BootstrapTokenRecord) -> bool:
        """False when a record with that ID exists."""

    async def delete(self, token_id: str) -> bool:
        """False when there is no such record."""

    async def catch_up(self) -> None:
        """Until reads show every write committed before this call, by any master."""


class TokenStore:
    """The cluster's bootstrap tokens, kept in the store through `records`;
    `directory`: a master data directory whose old token files are imported."""

    def __init__(
        self,
        records: TokenRecords,
        directory: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.records = records
        self._clock = clock
        self.directory = directory
        self._legacy: dict[str, StoredToken] = {}
        self._import_lock = asyncio.Lock()
        if directory is not None:
            self._legacy = _read_legacy(directory)

    @property
    def _legacy_files(self) -> list[Path]:
        if self.directory is None:
            return []
        return [self.directory / name for name in LEGACY_FILES]

    def now(self) -> float:
        return self._clock()

    @property
    def exists(self) -> bool:
        """Whether the cluster ever had tokens (false before its first start): any
        token in the store, or old token files here, imported or not."""
        if self.records.all() or self._legacy:
            return True
        return any(
            path.exists() or path.with_name(path.name + IMPORTED).exists()
            for path in self._legacy_files
        )

    async def import_legacy(self) -> int:
        """Move the tokens of this master's old `bootstrap-tokens.json` into the
        store (an ID already there is kept), then rename the files; how many moved."""
        async with self._import_lock:
            if not self._legacy:
                return 0
            moved = 0
            for stored in list(self._legacy.values()):
                moved += await self.records.create(stored.record())
            for path in self._legacy_files:
                if path.exists():
                    path.replace(path.with_name(path.name + IMPORTED))
            self._legacy = {}
            return moved

    def _find(self, token_id: str) -> StoredToken | None:
        record = self.records.get(token_id)
        if record is not None:
            return StoredToken.of(record)
        return self._legacy.get(token_id)

    async def issue(
        self, ttl: float = DEFAULT_TTL, description: str = ""
    ) -> tuple[str, StoredToken]:
        """A new token (ID.SECRET, the only time the secret is seen) and what is
        kept, written to the store before this returns. `ttl` 0: never expires."""
        token, stored = self._make(ttl, description)
        await self.import_legacy()
        while not await self.records.create(stored.record()):
            token, stored = self._make(ttl, description)  # another master took the ID
        await self._drop_long_expired()
        return token, stored

    def _make(self, ttl: float, description: str) -> tuple[str, StoredToken]:
        if ttl < 0:
            raise ValueError("ttl must not be negative (0: never expires)")
        now = self._clock()
        while True:
            token = generate()
            token_id, secret = split(token)
            if self._find(token_id) is None:
                break
        digest = hashlib.sha256(secret.encode()).hexdigest()
        return token, StoredToken(token_id, digest, description, now, now + ttl if ttl else 0)

    async def _drop_long_expired(self) -> None:
        """Long-expired tokens go with the next write, as kubeadm's token cleaner does."""
        now = self._clock()
        for record in self.records.all():
            if record.expires and now - record.expires > _KEEP_EXPIRED:
                await self.records.delete(record.metadata.name)

    def list(self) -> list[StoredToken]:
        found = dict(self._legacy)
        found.update((r.metadata.name, StoredToken.of(r)) for r in self.records.all())
        return sorted(found.values(), key=lambda t: t.created)

    async def remove(self, token_id: str) -> bool:
        """Delete a token from the store; False when there is no such token."""
        await self.import_legacy()
        return await self.records.delete(token_id)

    def check(self, token: str) -> str:
        """The token's ID when it allows joining now (as this master's cache shows
        the store); TokenRefused saying why not."""
        if not token:
            raise TokenRefused(f"joining needs a bootstrap token: {_HOW_TO_JOIN}")
        try:
            token_id, secret = split(token)
        except ValueError as exc:
            raise TokenRefused(f"malformed bootstrap token: {exc}") from None
        stored = self._find(token_id)
        # An unknown ID and a wrong secret answer alike; the hash is compared either way.
        expected = stored.hash if stored is not None else "0" * 64
        given = stored.hash_of(secret) if stored is not None else _UNKNOWN.hash_of(secret)
        if not hmac.compare_digest(given, expected) or stored is None:
            raise TokenRefused(
                f"unknown bootstrap token {token_id} (deleted, or never made): {_HOW_TO_JOIN}"
            )
        if stored.expired(self._clock()):
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stored.expires))
            raise TokenRefused(f"bootstrap token {token_id} expired at {when}: {_HOW_TO_JOIN}")
        return token_id

    async def admit(self, token: str) -> str:
        """`check`, and for a token this master does not know yet, check again once
        its view of the store has caught up (one made a moment ago on another master)."""
        try:
            return self.check(token)
        except TokenRefused as refused:
            if not str(refused).startswith("unknown bootstrap token"):
                raise
        await self.records.catch_up()
        return self.check(token)


_UNKNOWN = StoredToken("", "", "", 0, 0)


def _read_legacy(directory: Path) -> dict[str, StoredToken]:
    """The tokens of an old master's bootstrap-tokens.json, with its HMAC key."""
    path, key_path = (directory / name for name in LEGACY_FILES)
    if not path.exists():
        return {}
    try:
        key = bytes.fromhex(key_path.read_text().strip())
        tokens = {}
        for entry in json.loads(path.read_text() or "[]"):
            stored = StoredToken(**entry, hmac_key=key)
            tokens[stored.id] = stored
        return tokens
    except (ValueError, TypeError, OSError) as exc:
        raise ValueError(
            f"cannot read the bootstrap tokens in {directory} ({exc}); move "
            f"{path.name} and {key_path.name} away to start without them"
        ) from None
