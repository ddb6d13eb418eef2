"""How API objects are stored: protobuf bytes, revision in metadata.resourceVersion.

A key's first segment names what its value is: an API kind's plural ("/pods/...")
or an internal record's prefix ("/serviceipallocations/..."). Internal records
(protos/kubeling/v1/internal.proto) are what the masters keep for themselves in
the shared store (allocations, bootstrap tokens): the codec decodes them like any
value, but they are no Kind, so no registry and hence no List/Watch/Get RPC ever
serves them. A new internal record is a row in INTERNAL_RECORDS.

Secrets are encrypted at rest, as Kubernetes' `aesgcm` encryption provider does
(here on by default): the whole serialized Secret becomes
`kubeling:enc:aesgcm:v1:KEYNAME:` + 12-byte random nonce + AES-256-GCM ciphertext,
with the Secret's key ("/secrets/NS/NAME") as associated data, so a value copied
under another name does not decrypt. Doing it here covers both backends, their
history rows and backups (which carry the encoded bytes). A value without the
prefix is an old plaintext Secret and is read as it is; it is encrypted at its
next write.

The key (SecretsCipher.for_data_dir): several masters must share it, so it is
derived with HKDF-SHA256 from the cluster CA's private key (`pki/ca.key`, the
same secret master/etcd_pki.py derives the etcd CA from, under another label);
key name `ca`. A master without a CA (--insecure) makes a random key once in
`DATA_DIR/secrets-encryption.key` (0600); key name `local`. Both are accepted
on read, so a cluster that moves from --insecure to TLS still reads its Secrets.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import Message

from kubeling.api.kinds import ALL_KINDS, SECRET, Kind
from kubeling.master import cluster_ca
from kubeling.v1 import internal_pb2

ENCRYPTION_PREFIX = b"kubeling:enc:aesgcm:v1:"
LOCAL_KEY_FILE = "secrets-encryption.key"
CA_KEY_NAME = "ca"
LOCAL_KEY_NAME = "local"
# The label binds the derived key to this one use of the cluster CA's key.
_DERIVE_INFO = b"kubeling secrets encryption key v1"
_NONCE_SIZE = 12
_SECRETS_SEGMENT = SECRET.plural

# Internal record prefixes (a key's first segment) and their message types.
SERVICE_IP_ALLOCATIONS = "serviceipallocations"
SERVICE_NODE_PORT_ALLOCATIONS = "servicenodeportallocations"
BOOTSTRAP_TOKENS = "bootstraptokens"
INTERNAL_RECORDS: dict[str, type[Message]] = {
    SERVICE_IP_ALLOCATIONS: internal_pb2.Allocation,
    SERVICE_NODE_PORT_ALLOCATIONS: internal_pb2.Allocation,
    BOOTSTRAP_TOKENS: internal_pb2.BootstrapTokenRecord,
}


def internal_key(prefix: str, name: str) -> str:
    """The store key of internal record `name` under `prefix`."""
    assert prefix in INTERNAL_RECORDS, prefix
    return f"/{prefix}/{name}"


def internal_prefix(prefix: str) -> str:
    """The key prefix that lists every record of one internal kind."""
    assert prefix in INTERNAL_RECORDS, prefix
    return f"/{prefix}/"


class SecretDecryptionError(Exception):
    """A stored Secret this master cannot read: another cluster's key, or damage."""


class SecretsCipher:
    """AES-GCM for Secret values: one key to write with, every known key to read.

    `load` (the master's) reads the keys from disk at first use rather than at
    construction: a master's store is made before its first start creates the CA.
    """

    def __init__(
        self,
        write_name: str,
        keys: dict[str, bytes] | None = None,
        load: Callable[[], dict[str, bytes]] | None = None,
    ) -> None:
        assert ":" not in write_name
        self._write_name = write_name
        self._load = load
        self._aead: dict[str, AESGCM] = {}
        if keys is not None:
            self._use(keys)

    def _use(self, keys: dict[str, bytes]) -> None:
        self._aead = {name: AESGCM(key) for name, key in keys.items()}

    def _key(self, name: str) -> AESGCM | None:
        if name not in self._aead and self._load is not None:
            self._use(self._load())
        return self._aead.get(name)

    @classmethod
    def for_data_dir(cls, data_dir: Path, tls: bool) -> SecretsCipher:
        """The master's cipher: the CA-derived key with TLS, else the local key file
        (made once); each other key that exists is accepted on read."""
        return cls(CA_KEY_NAME if tls else LOCAL_KEY_NAME, load=lambda: _keys_in(data_dir, tls))

    def encrypt(self, key: str, plain: bytes) -> bytes:
        aead = self._key(self._write_name)
        if aead is None:
            raise SecretDecryptionError(f"no Secrets encryption key {self._write_name!r}")
        nonce = os.urandom(_NONCE_SIZE)
        sealed = aead.encrypt(nonce, plain, key.encode())
        return ENCRYPTION_PREFIX + self._write_name.encode() + b":" + nonce + sealed

    def decrypt(self, key: str, data: bytes) -> bytes:
        raw_name, _, rest = data[len(ENCRYPTION_PREFIX) :].partition(b":")
        name = raw_name.decode(errors="replace")
        aead = self._key(name)
        if aead is None:
            raise SecretDecryptionError(
                f"{key}: encrypted with key {name!r}, which this master does not have "
                f"(it has: {', '.join(sorted(self._aead)) or 'none'})"
            )
        if len(rest) < _NONCE_SIZE:
            raise SecretDecryptionError(f"{key}: the encrypted value is damaged (cut short)")
        try:
            return aead.decrypt(rest[:_NONCE_SIZE], rest[_NONCE_SIZE:], key.encode())
        except InvalidTag:
            raise SecretDecryptionError(
                f"{key}: cannot decrypt with key {name!r}: the value was encrypted with "
                "another cluster's key (pki/ca.key or secrets-encryption.key differs) "
                "or is damaged"
            ) from None


def _keys_in(data_dir: Path, tls: bool) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    ca_key = data_dir / "pki" / "ca.key"
    if ca_key.exists():
        keys[CA_KEY_NAME] = derive_key(ca_key.read_bytes())
    elif tls:
        raise SecretDecryptionError(
            f"{ca_key} is missing: Secrets are encrypted with a key derived from it"
        )
    local = data_dir / LOCAL_KEY_FILE
    if local.exists() or not tls:
        keys[LOCAL_KEY_NAME] = _local_key(local)
    return keys


def derive_key(ca_key_pem: bytes) -> bytes:
    """The 256-bit Secrets key: the same on every master holding the cluster CA's key."""
    return cluster_ca.derive_secret(ca_key_pem, _DERIVE_INFO, 32)


def _local_key(path: Path) -> bytes:
    """The key in `path`, made (random, 0600) when there is none."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(base64.b64encode(os.urandom(32)).decode() + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)  # exclusive: a racing master's key wins, not both
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    try:
        key = base64.b64decode(path.read_text().strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise SecretDecryptionError(f"{path}: expected a base64 256-bit key")
    return key


class ProtoCodec:
    """Protobuf bytes; Secrets through `cipher` when there is one (without one they
    are written in the clear: tests and tools that never hold Secrets)."""

    def __init__(self, cipher: SecretsCipher | None = None) -> None:
        self._cipher = cipher
        self._kinds: dict[str, Kind] = {kind.plural: kind for kind in ALL_KINDS}
        # An internal prefix equal to a kind's plural would be served by its registry.
        assert not set(self._kinds) & set(INTERNAL_RECORDS)
        self._messages: dict[str, type[Message]] = {
            **{plural: kind.message for plural, kind in self._kinds.items()},
            **INTERNAL_RECORDS,
        }

    def kind_of_key(self, key: str) -> Kind:
        """The API kind stored under `key`; KeyError for an internal record."""
        return self._kinds[key.split("/", 2)[1]]

    @classmethod
    def for_master(cls, data_dir: Path, tls: bool) -> ProtoCodec:
        """The codec a master stores with: Secrets encrypted (see the module doc)."""
        return cls(SecretsCipher.for_data_dir(data_dir, tls))

    def encode(self, value: Message) -> bytes:
        data = value.SerializeToString(deterministic=True)
        if self._cipher is not None and isinstance(value, SECRET.message):
            meta = value.metadata  # type: ignore[attr-defined]
            data = self._cipher.encrypt(SECRET.key(meta.namespace, meta.name), data)
        return data

    def decode(self, key: str, data: bytes) -> Message:
        segment = key.split("/", 2)[1]
        if segment == _SECRETS_SEGMENT and data.startswith(ENCRYPTION_PREFIX):
            if self._cipher is None:
                raise SecretDecryptionError(f"{key}: encrypted, and this reader has no key")
            data = self._cipher.decrypt(key, data)
        return self._messages[segment].FromString(data)

    def stamp(self, value: Message, rev: int) -> None:
        value.metadata.resource_version = str(rev)  # type: ignore[attr-defined]

    def revision_of(self, value: Message) -> int:
        text = value.metadata.resource_version  # type: ignore[attr-defined]
        return int(text) if text else 0
