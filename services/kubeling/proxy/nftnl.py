"""One element of an nftables map, read straight from the kernel over netlink.

Why: nft 1.0.6 fetches every element of every set of the table before it answers
`get element` (1.6 s with the 110,000 elements of 10,000 services; a few ms for the
kernel to look up one key). `proxy explain` reads a service's elements one by one,
so it asks the kernel itself: one NFT_MSG_GETSETELEM request with the key, and the
reply's data (a verdict, or an address and port) and comment.

Keys and values are nft text, as the proxy writes them (`10.96.0.10 . tcp . 80 . 3`);
`Codec` turns them into the kernel's bytes for one map's declaration (each field of a
concatenation padded to 4 bytes).
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWSETELEM = 12
NFT_MSG_GETSETELEM = 13
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 0x2
NLA_F_NESTED = 0x8000
NFPROTO_IPV4 = 2

NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_SET_ELEM_USERDATA = 6
NFTA_DATA_VALUE = 1
NFTA_DATA_VERDICT = 2
NFTA_VERDICT_CODE = 1
NFTA_VERDICT_CHAIN = 2
NFTNL_UDATA_SET_ELEM_COMMENT = 0

_VERDICTS = {-3: "jump", -4: "goto", 0: "drop", 1: "accept", -1: "continue", -5: "return"}
_PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}

# What a field of a declaration is, by its nft spelling (`type` or `typeof`).
_FIELD_KINDS = {
    "ipv4_addr": "ipv4",
    "ip daddr": "ipv4",
    "ip saddr": "ipv4",
    "inet_proto": "proto",
    "meta l4proto": "proto",
    "inet_service": "port",
    "th dport": "port",
    "numgen": "u32",
    "verdict": "verdict",
}


class NetlinkError(Exception):
    """The kernel refused the request (other than: no such element)."""


def _kind(field: str) -> str:
    field = field.strip()
    for spelling, kind in _FIELD_KINDS.items():
        if field == spelling or field.startswith(spelling + " "):
            return kind
    raise ValueError(f"no netlink codec for the field {field!r}")


@dataclass(frozen=True)
class Codec:
    """The kinds of a map's key fields and of its value (`verdict`, or fields)."""

    key: tuple[str, ...]
    value: tuple[str, ...]

    @classmethod
    def from_declaration(cls, declaration: str) -> Codec:
        """`type ipv4_addr . inet_proto . inet_service : verdict`, or a `typeof` one
        (rules.sets()); ValueError for a field it does not know."""
        spec = declaration.split(";")[0].strip()
        for prefix in ("typeof ", "type "):
            if spec.startswith(prefix):
                spec = spec[len(prefix) :]
                break
        key, _, value = spec.partition(" : ")
        return cls(
            tuple(_kind(f) for f in key.split(" . ")),
            tuple(_kind(f) for f in value.split(" . ")) if value else (),
        )

    def encode_key(self, text: str) -> bytes:
        parts = [p.strip() for p in text.split(" . ")]
        if len(parts) != len(self.key):
            raise ValueError(f"key {text!r} does not have {len(self.key)} fields")
        return b"".join(_encode(kind, part) for kind, part in zip(self.key, parts, strict=True))

    def decode_value(self, data: bytes) -> str:
        fields = []
        for index, kind in enumerate(self.value):
            fields.append(_decode(kind, data[4 * index : 4 * index + 4]))
        return " . ".join(fields)


def _encode(kind: str, text: str) -> bytes:
    if kind == "ipv4":
        return socket.inet_aton(text)
    if kind == "proto":
        number = _PROTOCOLS.get(text)
        return struct.pack("B3x", number if number is not None else int(text))
    if kind == "port":
        return struct.pack("!H2x", int(text))
    if kind == "u32":
        return struct.pack("=I", int(text))  # a numgen register: host byte order
    raise ValueError(f"cannot encode a {kind} key field")


def _decode(kind: str, data: bytes) -> str:
    if kind == "ipv4":
        return socket.inet_ntoa(data[:4])
    if kind == "port":
        return str(struct.unpack("!H", data[:2])[0])
    if kind == "proto":
        number = data[0]
        return next((name for name, n in _PROTOCOLS.items() if n == number), str(number))
    if kind == "u32":
        return str(struct.unpack("=I", data[:4])[0])
    raise ValueError(f"cannot decode a {kind} value field")


# -- netlink --------------------------------------------------------------------------


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _attrs(data: bytes) -> dict[int, bytes]:
    out = {}
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out[kind & ~NLA_F_NESTED] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


def _comment(userdata: bytes) -> str:
    """The comment TLV of an element's userdata (libnftnl's udata: type, length)."""
    offset = 0
    while offset + 2 <= len(userdata):
        kind, length = userdata[offset], userdata[offset + 1]
        if kind == NFTNL_UDATA_SET_ELEM_COMMENT:
            return userdata[offset + 2 : offset + 2 + length].rstrip(b"\0").decode()
        offset += 2 + length
    return ""


_sequence = itertools.count(1)


def get_element(table: str, map_name: str, codec: Codec, key: str) -> tuple[str, str] | None:
    """(value, comment) of the element `key` of the map `ip TABLE MAP_NAME`, or None
    when the kernel has no such element (or no such map or table). `key` as nft
    prints it. Raises NetlinkError for any other refusal."""
    element = _attr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, _attr(NFTA_DATA_VALUE, codec.encode_key(key)))
    body = (
        struct.pack("=BBH", NFPROTO_IPV4, 0, 0)
        + _attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
        + _attr(NFTA_SET_ELEM_LIST_SET, map_name.encode() + b"\0")
        + _attr(
            NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED,
            _attr(NFTA_LIST_ELEM | NLA_F_NESTED, element),
        )
    )
    sequence = next(_sequence) & 0xFFFFFFFF
    message_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM
    header = struct.pack("=IHHII", 16 + len(body), message_type, NLM_F_REQUEST, sequence, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.bind((0, 0))
        sock.send(header + body)
        reply = sock.recv(65536)
    offset = 0
    while offset + 16 <= len(reply):
        length, kind, _, _, _ = struct.unpack_from("=IHHII", reply, offset)
        payload = reply[offset + 16 : offset + length]
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", payload)[0]
            if code in (errno.ENOENT, 0):
                return None
            raise NetlinkError(f"get element {map_name} {{ {key} }}: {os.strerror(code)}")
        if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM:
            return _parse_element(payload[4:], codec)
        offset += (length + 3) & ~3
    raise NetlinkError(f"get element {map_name} {{ {key} }}: no answer")


def _parse_element(body: bytes, codec: Codec) -> tuple[str, str] | None:
    elements = _attrs(_attrs(body).get(NFTA_SET_ELEM_LIST_ELEMENTS, b""))
    element = _attrs(elements.get(NFTA_LIST_ELEM, b""))
    data = _attrs(element.get(NFTA_SET_ELEM_DATA, b""))
    comment = _comment(element.get(NFTA_SET_ELEM_USERDATA, b""))
    if NFTA_DATA_VERDICT in data:
        verdict = _attrs(data[NFTA_DATA_VERDICT])
        code = struct.unpack("!i", verdict[NFTA_VERDICT_CODE][:4])[0]
        word = _VERDICTS.get(code, str(code))
        chain = verdict.get(NFTA_VERDICT_CHAIN, b"").rstrip(b"\0").decode()
        return (f"{word} {chain}" if chain else word), comment
    if NFTA_DATA_VALUE in data:
        return codec.decode_value(data[NFTA_DATA_VALUE]), comment
    return None  # a set element: no value
