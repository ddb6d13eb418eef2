"""Who is calling, from grpc's peer string ("ipv4:10.0.0.5:51000",
"ipv6:%5B::1%5D:51000" as grpcio 1.85 writes it, "unix:/run/x.sock"), until TLS
identities exist."""

from __future__ import annotations

import ipaddress
import urllib.parse


def peer_host(peer: str) -> str:
    """The host part of an IP peer ("10.0.0.5", "::1"); any other peer as a whole."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    # grpcio percent-encodes the brackets of an IPv6 peer.
    return urllib.parse.unquote(rest).rpartition(":")[0].strip("[]")


def is_local(peer: str) -> bool:
    """Whether the caller is on this machine: a unix socket or a loopback address."""
    if peer.startswith("unix"):
        return True
    if not peer.startswith(("ipv4:", "ipv6:")):
        return False
    try:
        address = ipaddress.ip_address(peer_host(peer))
    except ValueError:
        return False
    # A dual-stack listener ([::]:6443) sees 127.0.0.1 as ::ffff:127.0.0.1.
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


def is_loopback_address(host: str) -> bool:
    """Whether a listen host ("127.0.0.1", "::1", "localhost") is loopback only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
