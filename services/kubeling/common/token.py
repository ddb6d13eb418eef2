"""Bootstrap tokens (kubeadm's): what a new node presents to get its certificate.

A token is `ID.SECRET` (`[a-z0-9]{6}.[a-z0-9]{16}`) with an expiry (default 24 h)
and a description. The master keeps them in its data directory
(`bootstrap-tokens.json`, mode 0600) as an HMAC-SHA256 of the secret under a key
of its own (`bootstrap-tokens.key`, 0600, a separate file so that a copy of the
token list alone reveals nothing), and compares in constant time. Tokens are
made, listed and deleted through `kubeling.v1.Tokens` (master/tokens.py,
`kubeling token ...`, admins only). A joining kubelet or proxy sends one in
`Certificates/Join` (master/certificates.py) and gets a certificate; from then on
its certificate authenticates it, so an expired token does not stop a restart.

A file rather than objects in the store: a single writer (this master) keeps the
file consistent without a new kind, and the secrets' hashes stay out of what
List/Watch serve. Several masters sharing one store will need them moved into it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_TTL = 24 * 3600.0
TOKEN_RE = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
ID_RE = re.compile(r"^[a-z0-9]{6}$")
_ALPHABET = string.ascii_lowercase + string.digits
# Expired tokens are kept this long (to say "expired" rather than "unknown"), then dropped.
_KEEP_EXPIRED = 7 * 24 * 3600.0
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
    hash: str  # hex HMAC-SHA256(key, secret)
    description: str
    created: float  # unix seconds
    expires: float  # unix seconds; 0: never

    def expired(self, now: float) -> bool:
        return self.expires != 0 and now >= self.expires


class TokenStore:
    """The master's bootstrap tokens, persisted in `directory` (one writer: this process)."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = directory / "bootstrap-tokens.json"
        self.key_path = directory / "bootstrap-tokens.key"
        self._clock = clock
        self._tokens: dict[str, StoredToken] = {}
        try:
            if self.key_path.exists():
                self._key = bytes.fromhex(self.key_path.read_text().strip())
            else:
                self._key = secrets.token_bytes(32)
                write_private(self.key_path, self._key.hex() + "\n")
            if self.path.exists():
                for entry in json.loads(self.path.read_text() or "[]"):
                    stored = StoredToken(**entry)
                    self._tokens[stored.id] = stored
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"cannot read the bootstrap tokens in {directory} ({exc}); move "
                f"{self.path.name} and {self.key_path.name} away to start with none"
            ) from None

    def _hash(self, secret: str) -> str:
        return hmac.new(self._key, secret.encode(), hashlib.sha256).hexdigest()

    def _save(self) -> None:
        entries = [asdict(t) for t in sorted(self._tokens.values(), key=lambda t: t.created)]
        write_private(self.path, json.dumps(entries, indent=1) + "\n")

    def now(self) -> float:
        return self._clock()

    @property
    def exists(self) -> bool:
        """Whether tokens were ever stored here (false before the first start)."""
        return self.path.exists()

    def create(self, ttl: float = DEFAULT_TTL, description: str = "") -> tuple[str, StoredToken]:
        """A new token (ID.SECRET, the only time the secret is seen) and what is kept.
        `ttl` 0: never expires."""
        if ttl < 0:
            raise ValueError("ttl must not be negative (0: never expires)")
        now = self._clock()
        while True:
            token = generate()
            token_id, secret = split(token)
            if token_id not in self._tokens:
                break
        stored = StoredToken(
            token_id, self._hash(secret), description, now, now + ttl if ttl else 0
        )
        # Long-expired tokens go with the next write, as kubeadm's token cleaner does.
        self._tokens = {
            i: t
            for i, t in self._tokens.items()
            if not (t.expires and now - t.expires > _KEEP_EXPIRED)
        }
        self._tokens[token_id] = stored
        self._save()
        return token, stored

    def list(self) -> list[StoredToken]:
        return sorted(self._tokens.values(), key=lambda t: t.created)

    def delete(self, token_id: str) -> bool:
        """False when there is no such token."""
        if self._tokens.pop(token_id, None) is None:
            return False
        self._save()
        return True

    def check(self, token: str) -> str:
        """The token's ID when it allows joining now; TokenRefused saying why not."""
        if not token:
            raise TokenRefused(f"joining needs a bootstrap token: {_HOW_TO_JOIN}")
        try:
            token_id, secret = split(token)
        except ValueError as exc:
            raise TokenRefused(f"malformed bootstrap token: {exc}") from None
        stored = self._tokens.get(token_id)
        # An unknown ID and a wrong secret answer alike; the hash is compared either way.
        expected = stored.hash if stored is not None else "0" * 64
        if not hmac.compare_digest(self._hash(secret), expected) or stored is None:
            raise TokenRefused(
                f"unknown bootstrap token {token_id} (deleted, or never made here): {_HOW_TO_JOIN}"
            )
        if stored.expired(self._clock()):
            when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stored.expires))
            raise TokenRefused(f"bootstrap token {token_id} expired at {when}: {_HOW_TO_JOIN}")
        return token_id
