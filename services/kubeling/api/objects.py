"""Small helpers on API objects shared by the master, the client and the CLI."""

from __future__ import annotations

import time
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

M = TypeVar("M", bound=Message)


def clone(obj: M) -> M:
    copy = type(obj)()
    copy.CopyFrom(obj)
    return copy


def now() -> Timestamp:
    # From the clock's nanoseconds: Timestamp.GetCurrentTime goes through datetime.
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    return Timestamp(seconds=seconds, nanos=nanos)


def to_dict(obj: Message) -> dict[str, Any]:
    """The object as Kubernetes-shaped JSON (camelCase, RFC 3339 times)."""
    return json_format.MessageToDict(obj, preserving_proto_field_name=False)


def from_dict(data: dict[str, Any], message: type[M]) -> M:
    """Parse Kubernetes-shaped JSON; unknown fields raise json_format.ParseError."""
    return json_format.ParseDict(data, message(), ignore_unknown_fields=False)


def resource_version(obj: Message) -> int:
    text = obj.metadata.resource_version  # type: ignore[attr-defined]
    return int(text) if text else 0
