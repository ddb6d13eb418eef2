"""The netlink element read's codecs and reply parsing (the kernel side is exercised
by tests/proxy, whose Explain answers come through it)."""

from __future__ import annotations

import struct

import pytest

from kubeling.proxy import nftnl
from kubeling.proxy import rules as r
from kubeling.proxy.nftnl import Codec

CODECS = {
    name: Codec.from_declaration(declaration)
    for name, (kind, declaration) in r.sets().items()
    if kind == "map"
}


def test_every_map_of_the_table_has_a_codec() -> None:
    assert CODECS[r.ENDPOINTS] == Codec(("ipv4", "proto", "port", "u32"), ("ipv4", "port"))
    assert CODECS[r.NODEPORT_ENDPOINTS] == Codec(("proto", "port", "u32"), ("ipv4", "port"))
    assert CODECS[r.SERVICE_IPS] == Codec(("ipv4", "proto", "port"), ("verdict",))
    assert CODECS[r.NO_ENDPOINT_NODEPORTS] == Codec(("proto", "port"), ("verdict",))


def test_key_fields_are_padded_to_four_bytes_as_the_kernel_keeps_them() -> None:
    key = CODECS[r.ENDPOINTS].encode_key("10.96.0.1 . tcp . 80 . 3")
    # As `nft --debug=netlink` prints the element: 0100600a 00000006 00005000 00000003
    assert key == bytes([10, 96, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0]) + struct.pack("=I", 3)
    assert CODECS[r.SERVICE_NODEPORTS].encode_key("udp . 30053") == bytes(
        [17, 0, 0, 0, 0x75, 0x65, 0, 0]
    )
    assert CODECS[r.ENDPOINTS].decode_value(bytes([10, 244, 0, 5, 0x1F, 0x90, 0, 0])) == (
        "10.244.0.5 . 8080"
    )


@pytest.mark.parametrize("key", ["10.96.0.1 . tcp . 80", "10.96.0.1 . tcp . 80 . x", "a . b"])
def test_a_key_that_does_not_fit_is_a_value_error(key: str) -> None:
    with pytest.raises(ValueError):
        CODECS[r.ENDPOINTS].encode_key(key)


def test_unknown_declaration_field_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="ether_addr"):
        Codec.from_declaration("type ether_addr : verdict")


def _element_reply(data: bytes, comment: str = "") -> bytes:
    """The body of an NFT_MSG_NEWSETELEM answer (after nfgenmsg), as the kernel sends
    it for one element."""
    attr = nftnl._attr
    nested = nftnl.NLA_F_NESTED
    userdata = b""
    if comment:
        text = comment.encode() + b"\0"
        userdata = attr(nftnl.NFTA_SET_ELEM_USERDATA, bytes([0, len(text)]) + text)
    element = attr(nftnl.NFTA_SET_ELEM_DATA | nested, data) + userdata
    return attr(nftnl.NFTA_SET_ELEM_LIST_TABLE, b"kubeling\0") + attr(
        nftnl.NFTA_SET_ELEM_LIST_ELEMENTS | nested, attr(nftnl.NFTA_LIST_ELEM | nested, element)
    )


def test_parse_a_verdict_element_with_its_comment() -> None:
    verdict = nftnl._attr(nftnl.NFTA_VERDICT_CODE, struct.pack("!i", -4)) + nftnl._attr(
        nftnl.NFTA_VERDICT_CHAIN, b"lb-3\0"
    )
    data = nftnl._attr(nftnl.NFTA_DATA_VERDICT | nftnl.NLA_F_NESTED, verdict)
    body = _element_reply(data, "default/web:http")
    assert nftnl._parse_element(body, CODECS[r.SERVICE_IPS]) == ("goto lb-3", "default/web:http")


def test_parse_a_data_element() -> None:
    data = nftnl._attr(nftnl.NFTA_DATA_VALUE, bytes([10, 244, 1, 7, 0, 53, 0, 0]))
    assert nftnl._parse_element(_element_reply(data), CODECS[r.ENDPOINTS]) == (
        "10.244.1.7 . 53",
        "",
    )
