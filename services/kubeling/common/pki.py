"""The cluster's PKI: a CA, serving and client certificates, CSRs, kubeadm's CA pin.

Keys are EC P-256 (`cryptography`). The CA lives 10 years; what it signs carries
only the extensions its use needs (serverAuth with SANs, or clientAuth). A CSR is
signed only when its own signature holds and its subject is exactly the one the
caller expects (as Kubernetes' CSR approver checks `CN=system:node:NAME,
O=system:nodes`): the signer decides the identity, not the requester.
Nothing here is wired into common/rpc.py yet.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubeling.common.token import write_private

CA_DAYS = 3650
# Certificates start a little in the past: a peer's clock may be behind ours.
_BACKDATE = timedelta(minutes=5)
# Names end up in gRPC's x509_subject ("CN=a,O=b"), which an authorizer reads: no
# character that could be mistaken for a separator or another attribute.
_UNSAFE = re.compile(r"[/\\=,+\n\r\x00\"<>;#]")
_DNS = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


class PkiError(Exception):
    """A key, CSR or certificate that is malformed or not acceptable."""


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class CertInfo:
    common_name: str
    organizations: tuple[str, ...]
    not_after: datetime
    dns_names: tuple[str, ...]
    ips: tuple[str, ...]


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    for part in (common_name, *organizations):
        if not part or _UNSAFE.search(part):
            raise PkiError(f"{part!r} is not a usable name (empty or with / \\ = , + ...)")
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"not a usable private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"unsupported key type {type(key).__name__}")
    return key


def _load_cert(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise PkiError(f"not a certificate: {exc}") from None


def make_key() -> bytes:
    """A new EC P-256 private key, PEM (PKCS#8)."""
    return _pem_key(ec.generate_private_key(ec.SECP256R1()))


def make_ca(common_name: str = "kubeling-ca", days: int = CA_DAYS) -> Issued:
    """A self-signed CA certificate (basicConstraints CA:TRUE, keyCertSign) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def make_csr(key_pem: bytes, common_name: str, organizations: Sequence[str] = ()) -> bytes:
    """A CSR (PEM) for `key_pem` with subject O=..., CN=common_name."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(common_name, organizations))
        .sign(_load_key(key_pem), hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def sign_csr(
    ca: Issued,
    csr_pem: bytes,
    common_name: str,
    organizations: Sequence[str] = (),
    days: int = 365,
    *,
    server: bool = False,
    client: bool = True,
    dns_names: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> bytes:
    """A certificate (PEM) for the CSR's key, valid `days`; PkiError unless the CSR's
    signature holds and its subject is exactly CN=common_name, O=organizations."""
    if not (server or client):
        raise PkiError("a certificate is for a server, a client or both")
    expected = _name(common_name, organizations)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise PkiError(f"not a certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise PkiError("the CSR's signature does not match its key")
    if csr.subject != expected:
        raise PkiError(
            f"the CSR asks for {csr.subject.rfc4514_string() or 'no subject'}, "
            f"not {expected.rfc4514_string()}"
        )
    ca_cert = _load_cert(ca.cert_pem)
    ca_key = _load_key(ca.key_pem)
    usages = [
        oid
        for oid, wanted in (
            (ExtendedKeyUsageOID.SERVER_AUTH, server),
            (ExtendedKeyUsageOID.CLIENT_AUTH, client),
        )
        if wanted
    ]
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
    )
    sans: list[x509.GeneralName] = [x509.DNSName(_dns_name(n)) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def issue(
    ca: Issued,
    common_name: str,
    organizations: Sequence[str] = (),
    days: int = 365,
    *,
    server: bool = False,
    client: bool = True,
    dns_names: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> Issued:
    """A new key and its certificate from `ca` (CSR made and signed here)."""
    key = make_key()
    csr = make_csr(key, common_name, organizations)
    cert = sign_csr(
        ca, csr, common_name, organizations, days,
        server=server, client=client, dns_names=dns_names, ips=ips,
    )  # fmt: skip
    return Issued(cert, key)


def serving_cert(
    ca: Issued,
    common_name: str,
    ips: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    days: int = 365,
) -> Issued:
    """A server certificate whose SANs are `ips` and `dns_names`."""
    if not ips and not dns_names:
        raise PkiError("a serving certificate needs at least one IP or DNS name")
    return issue(ca, common_name, (), days, server=True, client=False, dns_names=dns_names, ips=ips)


def ca_pin(cert_pem: bytes) -> str:
    """kubeadm's --discovery-token-ca-cert-hash: sha256 of the SubjectPublicKeyInfo DER."""
    spki = (
        _load_cert(cert_pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def cert_info(cert_pem: bytes) -> CertInfo:
    """Subject, expiry and SANs of a certificate."""
    cert = _load_cert(cert_pem)

    def values(oid: x509.ObjectIdentifier) -> tuple[str, ...]:
        return tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(oid))

    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(sans.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    return CertInfo(
        common_name=next(iter(values(NameOID.COMMON_NAME)), ""),
        organizations=values(NameOID.ORGANIZATION_NAME),
        not_after=cert.not_valid_after_utc,
        dns_names=dns,
        ips=ips,
    )


def write_key(path: Path, key_pem: bytes) -> None:
    """A private key file, mode 0600 from its creation."""
    write_private(path, key_pem.decode())


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=not cert_sign,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _dns_name(name: str) -> str:
    if not _DNS.fullmatch(name):
        raise PkiError(f"{name!r} is not a DNS name")
    return name
