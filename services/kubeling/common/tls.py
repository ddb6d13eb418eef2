"""TLS material for kubeling's servers and channels, and where it is kept.

`Credentials` is a CA certificate plus this process's own certificate and key
(PEM). A process keeps its credentials in a directory (`CredentialDir`):
`ca.crt`, `NAME.crt`, `NAME.key` (keys mode 0600), so that grpcurl can use the
same files (`-cacert`, `-cert`, `-key`). A server reads the directory again when
a TLS handshake starts and the files changed (a renewed certificate is served
without a restart).

Servers require a client certificate signed by the cluster CA; the master's join
port is the exception (no client certificate: a new node has none yet).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from kubeling.common.token import write_private


@dataclass(frozen=True)
class Credentials:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    # Clients: the name the server's certificate must carry when it is not the
    # host of the target address (a kubelet is checked against its node name).
    server_name: str = ""

    def with_server_name(self, name: str) -> Credentials:
        return Credentials(self.ca_pem, self.cert_pem, self.key_pem, name)


class CredentialDir:
    """`DIR/ca.crt`, `DIR/NAME.crt`, `DIR/NAME.key` on disk."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self.ca = directory / "ca.crt"
        self.cert = directory / f"{name}.crt"
        self.key = directory / f"{name}.key"

    def exists(self) -> bool:
        return self.ca.exists() and self.cert.exists() and self.key.exists()

    def load(self) -> Credentials:
        return Credentials(self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes())

    def save(self, credentials: Credentials) -> None:
        """Key first, certificate last: a reader that sees the new certificate also
        finds its key. Every file is 0600 (the CA certificate is public but is
        kept with the rest)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.ca, credentials.ca_pem.decode())
        write_private(self.key, credentials.key_pem.decode())
        write_private(self.cert, credentials.cert_pem.decode())

    def stamp(self) -> tuple[float, ...]:
        """Changes when any of the files is rewritten."""
        stamps = []
        for path in (self.ca, self.cert, self.key):
            try:
                stamps.append(os.stat(path).st_mtime_ns)
            except FileNotFoundError:
                stamps.append(0)
        return tuple(float(s) for s in stamps)


CredentialSource = Callable[[], Credentials]


def _certificate_config(credentials: Credentials, with_client_ca: bool) -> object:
    return grpc.ssl_server_certificate_configuration(
        [(credentials.key_pem, credentials.cert_pem)],
        root_certificates=credentials.ca_pem if with_client_ca else None,
    )


def server_credentials(
    source: CredentialDir | Credentials, require_client_cert: bool = True
) -> grpc.ServerCredentials:
    """TLS for a server port: the certificate from `source` (a directory is read
    again at a handshake after its files changed, so renewal needs no restart);
    with `require_client_cert`, only clients with a certificate from the CA."""
    if isinstance(source, Credentials):
        return grpc.ssl_server_credentials(
            [(source.key_pem, source.cert_pem)],
            root_certificates=source.ca_pem if require_client_cert else None,
            require_client_auth=require_client_cert,
        )
    seen = [source.stamp()]

    def fetch() -> object | None:
        # Called by gRPC at every handshake: cheap unless the files changed.
        stamp = source.stamp()
        if stamp == seen[0]:
            return None
        try:
            config = _certificate_config(source.load(), require_client_cert)
        except OSError:
            return None  # mid-rewrite: keep serving the old one, retry next handshake
        seen[0] = stamp
        return config

    return grpc.dynamic_ssl_server_credentials(
        _certificate_config(source.load(), require_client_cert),
        fetch,
        require_client_authentication=require_client_cert,
    )


def channel_credentials(credentials: Credentials) -> grpc.ChannelCredentials:
    """TLS for a channel: trust only the cluster CA, present our certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=credentials.ca_pem,
        private_key=credentials.key_pem or None,
        certificate_chain=credentials.cert_pem or None,
    )
