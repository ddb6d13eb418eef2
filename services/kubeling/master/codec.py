"""How API objects are stored: protobuf bytes, revision in metadata.resourceVersion.

A key's first segment names what its value is: an API kind's plural ("/pods/...")
or an internal record's prefix ("/serviceipallocations/..."). Internal records
(protos/kubeling/v1/internal.proto) are what the masters keep for themselves in
the shared store (allocations, bootstrap tokens): the codec decodes them like any
value, but they are no Kind, so no registry and hence no List/Watch/Get RPC ever
serves them. A new internal record is a row in INTERNAL_RECORDS.
"""

from __future__ import annotations

from google.protobuf.message import Message

from kubeling.api.kinds import ALL_KINDS, Kind
from kubeling.v1 import internal_pb2

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


class ProtoCodec:
    def __init__(self) -> None:
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

    def encode(self, value: Message) -> bytes:
        return value.SerializeToString(deterministic=True)

    def decode(self, key: str, data: bytes) -> Message:
        return self._messages[key.split("/", 2)[1]].FromString(data)

    def stamp(self, value: Message, rev: int) -> None:
        value.metadata.resource_version = str(rev)  # type: ignore[attr-defined]

    def revision_of(self, value: Message) -> int:
        text = value.metadata.resource_version  # type: ignore[attr-defined]
        return int(text) if text else 0
