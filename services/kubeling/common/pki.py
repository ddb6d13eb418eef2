"""The cluster's PKI: a CA, serving and client certificates, CSRs, kubeadm's CA pin.

Keys are EC P-256. The CA lives 10 years; what it signs carries only the
extensions its use needs (serverAuth with SANs, or clientAuth). A CSR is signed
only when its subject is the one the caller expects (as Kubernetes' CSR approver
checks `CN=system:node:NAME, O=system:nodes`) and its own signature holds.

Backend: the `openssl` command (OpenSSL 3), run with keys in a private temporary
directory, because the `cryptography` package is not a dependency yet; the
functions here are the interface, so moving to `cryptography` changes no caller.
Nothing here is wired into common/rpc.py yet.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import secrets
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kubeling.common.token import write_private

CA_DAYS = 3650
_OPENSSL = "openssl"
# Characters with meaning in an OpenSSL subject ("/CN=a/O=b") or config value.
_UNSAFE = re.compile(r"[/\\=,+\n\r\x00\"<>;#]")


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


def _run(args: Sequence[str], cwd: Path, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(
        [_OPENSSL, *args], cwd=cwd, input=stdin, capture_output=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise PkiError(f"openssl {args[0]}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def _subject(common_name: str, organizations: Sequence[str] = ()) -> str:
    for part in (common_name, *organizations):
        if not part or _UNSAFE.search(part):
            raise PkiError(f"{part!r} is not a usable name (empty or with / \\ = , + ...)")
    return "".join(f"/O={o}" for o in organizations) + f"/CN={common_name}"


def _workdir() -> tempfile.TemporaryDirectory[str]:
    # mkdtemp makes it 0700: keys written into it are never readable by others.
    return tempfile.TemporaryDirectory(prefix="kubeling-pki-")


def make_key() -> bytes:
    """A new EC P-256 private key, PEM (PKCS#8)."""
    with _workdir() as work:
        return _run(
            ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], Path(work)
        )


def make_ca(common_name: str = "kubeling-ca", days: int = CA_DAYS) -> Issued:
    """A self-signed CA certificate (basicConstraints CA:TRUE, keyCertSign) and its key."""
    key = make_key()
    with _workdir() as work:
        path = Path(work)
        (path / "ca.key").write_bytes(key)
        cert = _run(
            [
                "req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", str(days),
                "-subj", _subject(common_name), "-set_serial", str(_serial()),
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
                "-addext", "subjectKeyIdentifier=hash",
            ],
            path,
        )  # fmt: skip
    return Issued(cert, key)


def make_csr(key_pem: bytes, common_name: str, organizations: Sequence[str] = ()) -> bytes:
    """A CSR (PEM) for `key_pem` with subject O=..., CN=common_name."""
    with _workdir() as work:
        path = Path(work)
        (path / "k").write_bytes(key_pem)
        return _run(
            ["req", "-new", "-key", "k", "-sha256", "-subj", _subject(common_name, organizations)],
            path,
        )


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
    expected = _subject(common_name, organizations)
    usages = [u for u, wanted in (("serverAuth", server), ("clientAuth", client)) if wanted]
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={','.join(usages)}",
        "authorityKeyIdentifier=keyid",
        "subjectKeyIdentifier=hash",
    ]
    sans = [f"DNS:{_dns_name(n)}" for n in dns_names] + [
        f"IP:{ipaddress.ip_address(i)}" for i in ips
    ]
    if sans:
        lines.append(f"subjectAltName={','.join(sans)}")
    with _workdir() as work:
        path = Path(work)
        (path / "csr").write_bytes(csr_pem)
        (path / "ca.crt").write_bytes(ca.cert_pem)
        (path / "ca.key").write_bytes(ca.key_pem)
        (path / "ext").write_text("\n".join(lines) + "\n")
        _run(["req", "-in", "csr", "-noout", "-verify"], path)
        subject = _run(["req", "-in", "csr", "-noout", "-subject", "-nameopt", "compat"], path)
        got = subject.decode().strip().removeprefix("subject=")
        if got != expected:
            raise PkiError(f"the CSR asks for {got or 'no subject'}, not {expected}")
        return _run(
            [
                "x509", "-req", "-in", "csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-set_serial", str(_serial()), "-days", str(days), "-sha256",
                "-extfile", "ext",
            ],
            path,
        )  # fmt: skip


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
    with _workdir() as work:
        path = Path(work)
        (path / "c").write_bytes(cert_pem)
        public = _run(["x509", "-in", "c", "-noout", "-pubkey"], path)
        der = _run(["pkey", "-pubin", "-outform", "DER"], path, stdin=public)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def cert_info(cert_pem: bytes) -> CertInfo:
    """Subject, expiry and SANs of a certificate."""
    with _workdir() as work:
        path = Path(work)
        (path / "c").write_bytes(cert_pem)
        text = _run(
            ["x509", "-in", "c", "-noout", "-subject", "-enddate", "-nameopt", "compat",
             "-ext", "subjectAltName"],
            path,
        ).decode()  # fmt: skip
    subject = re.search(r"^subject=(.*)$", text, re.M)
    end = re.search(r"^notAfter=(.*)$", text, re.M)
    if subject is None or end is None:
        raise PkiError("not a certificate")
    parts = [p.split("=", 1) for p in subject.group(1).split("/") if "=" in p]
    sans = re.findall(r"(DNS|IP Address):([^,\s]+)", text)
    not_after = datetime.strptime(end.group(1).strip(), "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
    return CertInfo(
        common_name=next((v for k, v in parts if k == "CN"), ""),
        organizations=tuple(v for k, v in parts if k == "O"),
        not_after=not_after,
        dns_names=tuple(v for k, v in sans if k == "DNS"),
        ips=tuple(str(ipaddress.ip_address(v)) for k, v in sans if k == "IP Address"),
    )


def write_key(path: Path, key_pem: bytes) -> None:
    """A private key file, mode 0600 from its creation."""
    write_private(path, key_pem.decode())


def _serial() -> int:
    return secrets.randbits(127) | 1


def _dns_name(name: str) -> str:
    if not re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", name):
        raise PkiError(f"{name!r} is not a DNS name")
    return name
