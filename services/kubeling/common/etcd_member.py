"""The files of one etcd member's TLS, as `kubeling-master etcd-certs` writes them
(master/etcd_pki.py) and as etcd is started with them: by the lab, by the deploy
walk-through (Debian's /etc/default/etcd variables) and by tests. A shared
description, so the layout and the flags live in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Every member's peer certificate carries this CN and members require it, so a
# master's etcd client certificate (same etcd CA) cannot pose as a peer.
PEER_CN = "kubeling:etcd-peer"


@dataclass(frozen=True)
class EtcdMemberFiles:
    """One member's certificate directory."""

    directory: Path
    name: str

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def peer_cert(self) -> Path:
        return self.directory / "peer.crt"

    @property
    def peer_key(self) -> Path:
        return self.directory / "peer.key"

    def environment(self) -> dict[str, str]:
        """etcd's TLS settings as its ETCD_* variables (Debian's /etc/default/etcd)."""
        return {
            "ETCD_CERT_FILE": str(self.server_cert),
            "ETCD_KEY_FILE": str(self.server_key),
            "ETCD_TRUSTED_CA_FILE": str(self.ca),
            "ETCD_CLIENT_CERT_AUTH": "true",
            "ETCD_PEER_CERT_FILE": str(self.peer_cert),
            "ETCD_PEER_KEY_FILE": str(self.peer_key),
            "ETCD_PEER_TRUSTED_CA_FILE": str(self.ca),
            "ETCD_PEER_CLIENT_CERT_AUTH": "true",
            "ETCD_PEER_CERT_ALLOWED_CN": PEER_CN,
        }

    def flags(self) -> list[str]:
        """The same settings as etcd command-line flags."""
        flags = []
        for variable, value in self.environment().items():
            flag = "--" + variable.removeprefix("ETCD_").lower().replace("_", "-")
            flags.append(flag if value == "true" else f"{flag}={value}")
        return flags
