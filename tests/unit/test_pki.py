"""The PKI library (common/pki.py): a CA, serving and client certificates, CSRs signed
only for the expected subject, kubeadm's CA pin, 0600 key files; and grpc.aio mutual
TLS built from them: a client with a certificate from the CA is served and its CN
shows in `context.auth_context()`; no certificate, another CA's or an expired
certificate, or a server name outside the SANs are refused. Everything stays on loopback."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeling.common import pki

METHOD = "/kubeling.test.Identity/Who"


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.make_ca("kubeling-test-ca")


@pytest.fixture(scope="module")
def other_ca() -> pki.Issued:
    return pki.make_ca("someone-else")


def test_the_ca_lives_ten_years_and_signs_what_it_is_asked_for(ca: pki.Issued) -> None:
    info = pki.cert_info(ca.cert_pem)
    assert info.common_name == "kubeling-test-ca"
    assert info.not_after - datetime.now(UTC) > timedelta(days=3649)

    node = pki.issue(ca, "system:node:worker-1", ["system:nodes"], days=30)
    info = pki.cert_info(node.cert_pem)
    assert (info.common_name, info.organizations) == ("system:node:worker-1", ("system:nodes",))
    left = info.not_after - datetime.now(UTC)
    assert timedelta(days=29) < left <= timedelta(days=30)

    serving = pki.serving_cert(
        ca, "kubeling-master", ips=["10.0.0.10", "::1"], dns_names=["master.example"]
    )
    info = pki.cert_info(serving.cert_pem)
    assert info.ips == ("10.0.0.10", "::1") and info.dns_names == ("master.example",)


def test_a_csr_is_signed_only_for_the_expected_subject(ca: pki.Issued) -> None:
    key = pki.make_key()
    csr = pki.make_csr(key, "system:node:worker-1", ["system:nodes"])
    cert = pki.sign_csr(ca, csr, "system:node:worker-1", ["system:nodes"], days=1)
    assert pki.cert_info(cert).common_name == "system:node:worker-1"
    # A node asking for another node's name, or for more groups, is refused.
    greedy = pki.make_csr(key, "system:node:worker-1", ["system:nodes", "system:masters"])
    for wrong in (pki.make_csr(key, "system:node:worker-2", ["system:nodes"]), greedy):
        with pytest.raises(pki.PkiError, match="the CSR asks for"):
            pki.sign_csr(ca, wrong, "system:node:worker-1", ["system:nodes"])
    # A CSR whose signature does not hold (a byte of it changed) is refused.
    body = base64.b64decode(b"".join(csr.splitlines()[1:-1]))
    tampered = body[:-10] + bytes([body[-10] ^ 1]) + body[-9:]
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(tampered)
    with pytest.raises(pki.PkiError):
        pki.sign_csr(ca, pem + b"-----END CERTIFICATE REQUEST-----\n", "system:node:worker-1",
                     ["system:nodes"])  # fmt: skip
    for bad in ("", "a/CN=admin", "x,O=system:masters"):
        with pytest.raises(pki.PkiError):
            pki.make_csr(key, bad)
    with pytest.raises(pki.PkiError):
        pki.serving_cert(ca, "m", dns_names=["bad name"])
    with pytest.raises(ValueError):
        pki.serving_cert(ca, "m", ips=["10.0.0.300"])


def test_the_ca_pin_is_the_sha256_of_the_subject_public_key_info(ca: pki.Issued) -> None:
    pin = pki.ca_pin(ca.cert_pem)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", pin)
    # The public key's PEM body is the SubjectPublicKeyInfo DER, as kubeadm hashes it.
    # Computed apart from the library, with the openssl command as kubeadm's docs do.
    public = subprocess.run(
        ["openssl", "x509", "-noout", "-pubkey"], input=ca.cert_pem, capture_output=True, check=True
    ).stdout.decode()
    der = base64.b64decode("".join(public.strip().splitlines()[1:-1]))
    assert pin == "sha256:" + hashlib.sha256(der).hexdigest()
    assert pin != pki.ca_pin(pki.make_ca().cert_pem)


def test_key_files_are_0600(tmp_path: Path, ca: pki.Issued) -> None:
    path = tmp_path / "pki" / "ca.key"
    pki.write_key(path, ca.key_pem)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes() == ca.key_pem


@dataclass
class Seen:
    common_names: list[bytes] = field(default_factory=list)
    subjects: list[bytes] = field(default_factory=list)


@pytest.fixture
async def mtls_server(ca: pki.Issued) -> AsyncIterator[tuple[int, Seen]]:
    """A grpc.aio server on loopback that requires a client certificate from `ca` and
    answers with the caller's CN from its auth context."""
    seen = Seen()

    async def who(request: bytes, context: Any) -> bytes:
        auth = context.auth_context()
        names = auth.get("x509_common_name", [])
        seen.common_names.extend(names)
        # The groups (O) are only in the subject: what an authorizer reads them from.
        seen.subjects.extend(auth.get("x509_subject", []))
        return b",".join(names)

    serving = pki.serving_cert(ca, "kubeling-master", ips=["127.0.0.1"], dns_names=["localhost"])
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("kubeling.test.Identity", {
            "Who": grpc.unary_unary_rpc_method_handler(who),
        }),)
    )  # fmt: skip
    credentials = grpc.ssl_server_credentials(
        [(serving.key_pem, serving.cert_pem)],
        root_certificates=ca.cert_pem,
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield port, seen
    finally:
        await server.stop(0)


async def call(
    port: int, trust: bytes, client: pki.Issued | None, name: str | None = None
) -> bytes:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=trust,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    options = [("grpc.ssl_target_name_override", name)] if name else []
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options) as channel:
        reply: bytes = await channel.unary_unary(METHOD)(b"", timeout=10)
        return reply


async def test_mutual_tls_serves_a_client_with_a_certificate_from_the_ca(
    mtls_server: tuple[int, Seen], ca: pki.Issued
) -> None:
    port, seen = mtls_server
    node = pki.issue(ca, "system:node:worker-1", ["system:nodes"])
    assert await call(port, ca.cert_pem, node) == b"system:node:worker-1"
    assert await call(port, ca.cert_pem, node, name="localhost") == b"system:node:worker-1"
    assert seen.common_names == [b"system:node:worker-1"] * 2
    assert seen.subjects == [b"CN=system:node:worker-1,O=system:nodes"] * 2


async def test_mutual_tls_refuses_no_certificate_another_ca_and_a_wrong_name(
    mtls_server: tuple[int, Seen], ca: pki.Issued, other_ca: pki.Issued
) -> None:
    port, seen = mtls_server
    node = pki.issue(ca, "system:node:worker-1", ["system:nodes"])
    stranger = pki.issue(other_ca, "system:node:worker-1", ["system:nodes"])
    # days=0: valid from 5 minutes ago until the moment it was made.
    expired = pki.issue(ca, "system:node:worker-1", ["system:nodes"], days=0)
    refused = [
        (ca.cert_pem, None, None),  # no client certificate
        (ca.cert_pem, stranger, None),  # a certificate from another CA
        (ca.cert_pem, expired, None),  # an expired certificate
        (other_ca.cert_pem, node, None),  # the client does not trust the server
        (ca.cert_pem, node, "master.example"),  # a name outside the server's SANs
    ]
    for trust, client, name in refused:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call(port, trust, client, name)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE, (client, name)
    # None of them reached the servicer.
    assert seen.common_names == []
