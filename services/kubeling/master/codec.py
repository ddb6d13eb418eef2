"""How API objects are stored: protobuf bytes, revision in metadata.resourceVersion."""

from __future__ import annotations

from google.protobuf.message import Message

from kubeling.api.kinds import ALL_KINDS, Kind


class ProtoCodec:
    def __init__(self) -> None:
        self._kinds: dict[str, Kind] = {kind.plural: kind for kind in ALL_KINDS}

    def kind_of_key(self, key: str) -> Kind:
        return self._kinds[key.split("/", 2)[1]]

    def encode(self, value: Message) -> bytes:
        return value.SerializeToString(deterministic=True)

    def decode(self, key: str, data: bytes) -> Message:
        return self.kind_of_key(key).message.FromString(data)

    def stamp(self, value: Message, rev: int) -> None:
        value.metadata.resource_version = str(rev)  # type: ignore[attr-defined]

    def revision_of(self, value: Message) -> int:
        text = value.metadata.resource_version  # type: ignore[attr-defined]
        return int(text) if text else 0
