"""Certificates for etcd: its members (client and peer TLS) and the masters talking to it.

Everything hangs off the cluster CA (`DATA_DIR/pki/ca.crt`), but etcd does not trust
the cluster CA itself: that CA also signs every node's, kube-proxy's and user's
certificate, and etcd with `--client-cert-auth` lets any client its CA vouches for
read and write everything, so a node (or a `view` user) would walk past the API's
authorization straight into the store. Kubernetes keeps a separate etcd CA for
that reason. Here it is an intermediate, `kubeling-etcd-ca`, signed by the cluster
CA (path length 0), and it is what etcd trusts (`--trusted-ca-file`,
`--peer-trusted-ca-file`): only certificates made here get in.

The etcd CA's key is never stored: it is derived (HKDF-SHA256, a fixed label) from
the cluster CA's private key. Every master that holds `ca.key` therefore has the
same etcd CA, and copying `ca.crt` + `ca.key` to a second master is all it needs
to make its own etcd client certificate (the walk-through in deploy/README.md);
a backup of `pki/` covers it too. Its certificate, `pki/etcd-ca.crt`, is made on
first use and again when it is not the cluster CA's or nears its end; a remade one
has the same subject and key, so certificates it signed before stay valid.

Files (keys 0600, directories 0700; certificate files hold the chain leaf + etcd CA,
so a client trusting only the cluster CA, as the master does, verifies them):

- a member's directory (`issue_etcd_member`, `kubeling-master etcd-certs`):
  `ca.crt` (the etcd CA: what the member trusts), `server.crt`/`.key` (client port),
  `peer.crt`/`.key` (peer port); both serverAuth+clientAuth with the member's
  addresses, `localhost`, 127.0.0.1 and ::1 as SANs. The server certificate's CN is
  the member name; every peer certificate's CN is `kubeling:etcd-peer`, so the
  members can require it (`--peer-cert-allowed-cn`) and a master's client
  certificate cannot pose as a peer.
- a master's `pki/etcd-client.crt`/`.key` (`ensure_etcd_client`): clientAuth,
  CN `kubeling:master`; made once, again within 30 days of its end or when it is
  not the etcd CA's. The master uses it (with `pki/ca.crt`) for `--store etcd://`
  unless given other files.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import pwd
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kubeling.common import identity, pki
from kubeling.common.etcd_member import PEER_CN, EtcdMemberFiles
from kubeling.common.tls import Credentials, channel_credentials
from kubeling.common.token import write_private
from kubeling.master import cluster_ca

ETCD_CA_CN = "kubeling-etcd-ca"
ETCD_CA_CERT = "etcd-ca.crt"
CLIENT_NAME = "etcd-client"
# The label binds the derived key to this one use of the cluster CA's key.
_DERIVE_INFO = b"kubeling etcd CA key v1"
# Order of P-256's group: a private key is an integer in [1, n-1].
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_LOOPBACK_IPS = ("127.0.0.1", "::1")
_LOOPBACK_DNS = ("localhost",)
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class EtcdClientFiles:
    """What a master presents to etcd, and the CA it checks etcd's certificates with."""

    ca: Path
    cert: Path
    key: Path

    def credentials(self) -> Credentials:
        return Credentials(self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes())

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials for etcd's client port (read from the files now)."""
        return channel_credentials(self.credentials())


# ------------------------------------------------------------------ the CAs


def load_cluster_ca(data_dir: Path) -> pki.Issued:
    """The cluster CA of `data_dir/pki`; made, with the master's certificates, as at a
    master's first start when there is none yet (ValueError if half of it is there)."""
    directory = data_dir / "pki"
    crt, key = directory / "ca.crt", directory / "ca.key"
    if crt.exists() and key.exists():
        # Only read: the master's own certificates stay as the master made them.
        return pki.Issued(crt.read_bytes(), key.read_bytes())
    return cluster_ca.load_or_create(data_dir, listen=()).ca


def _etcd_ca_key(cluster: pki.Issued) -> ec.EllipticCurvePrivateKey:
    """The etcd CA's key: the same on every master holding the cluster CA's key."""
    # 48 bytes reduced modulo n-1: the bias is below 2^-128.
    okm = cluster_ca.derive_secret(cluster.key_pem, _DERIVE_INFO, 48)
    value = int.from_bytes(okm, "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(value, ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def _signed_by(cert: x509.Certificate, issuer_pem: bytes) -> bool:
    try:
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(issuer_pem))
    except Exception:  # another issuer, a bad signature, an odd algorithm: not ours
        return False
    return True


def _near_end(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - datetime.now(UTC) < cluster_ca.RENEW_BEFORE


def _make_etcd_ca_cert(cluster: pki.Issued, key: ec.EllipticCurvePrivateKey) -> bytes:
    root = x509.load_pem_x509_certificate(cluster.cert_pem)
    root_key = serialization.load_pem_private_key(cluster.key_pem, password=None)
    if not isinstance(root_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise pki.PkiError("the cluster CA's key is neither EC nor RSA")
    now = datetime.now(UTC)
    # Never past the cluster CA's own end: nothing below it outlives it.
    end = min(now + timedelta(days=pki.CA_DAYS), root.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, ETCD_CA_CN)]))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(end)
        # Path length 0: it signs leaf certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def etcd_ca(data_dir: Path) -> pki.Issued:
    """The etcd CA (certificate and derived key), its certificate `pki/etcd-ca.crt`
    made or remade when needed."""
    cluster = load_cluster_ca(data_dir)
    key = _etcd_ca_key(cluster)
    path = data_dir / "pki" / ETCD_CA_CERT
    try:
        current = path.read_bytes()
        cert = x509.load_pem_x509_certificate(current)
        usable = _same_key(cert, key) and _signed_by(cert, cluster.cert_pem)
        if not usable or _near_end(cert):
            current = b""
    except (OSError, ValueError):
        current = b""
    if not current:
        current = _make_etcd_ca_cert(cluster, key)
        write_private(path, current.decode())
    return pki.Issued(current, _pem(key))


# ------------------------------------------------------------- certificates


def _split_addresses(addresses: Sequence[str]) -> tuple[list[str], list[str]]:
    """(IPs, DNS names) for the SANs: the given addresses plus loopback."""
    ips = list(_LOOPBACK_IPS)
    dns = list(_LOOPBACK_DNS)
    for address in addresses:
        address = address.strip().strip("[]")
        if not address:
            continue
        if cluster_ca.is_ip(address):
            address = str(ipaddress.ip_address(address))
            if address not in ips:
                ips.append(address)
        elif cluster_ca.pki_dns_ok(address):
            if address not in dns:
                dns.append(address)
        else:
            raise pki.PkiError(f"{address!r} is neither an IP address nor a DNS name")
    return ips, dns


def issue_etcd_member(
    data_dir: Path,
    name: str,
    addresses: list[str],
    out_dir: Path,
    validity: float = cluster_ca.DEFAULT_CERT_VALIDITY,
) -> EtcdMemberFiles:
    """Write member `name`'s certificates into `out_dir` (0700): `ca.crt`, `server.crt`
    /`.key`, `peer.crt`/`.key` (keys 0600), SANs `addresses` and loopback. Files
    already there are replaced. PkiError for a bad name or address."""
    ca = etcd_ca(data_dir)
    ips, dns = _split_addresses(addresses)
    days = cluster_ca.days(validity)
    server = pki.issue(ca, name, (), days, server=True, client=True, dns_names=dns, ips=ips)
    peer = pki.issue(ca, PEER_CN, (), days, server=True, client=True, dns_names=dns, ips=ips)
    files = EtcdMemberFiles(out_dir, name)
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    out_dir.chmod(0o700)
    write_private(files.ca, ca.cert_pem.decode())
    # Keys before certificates: a reader that sees a new certificate finds its key.
    write_private(files.server_key, server.key_pem.decode())
    write_private(files.server_cert, (server.cert_pem + ca.cert_pem).decode())
    write_private(files.peer_key, peer.key_pem.decode())
    write_private(files.peer_cert, (peer.cert_pem + ca.cert_pem).decode())
    return files


def _client_stale(files: EtcdClientFiles, ca_pem: bytes) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return True
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return True
    # A crash between writing the key and the certificate leaves a mismatched pair.
    return not _same_key(cert, key) or not _signed_by(cert, ca_pem) or _near_end(cert)


def ensure_etcd_client(
    data_dir: Path, validity: float = cluster_ca.DEFAULT_CERT_VALIDITY
) -> EtcdClientFiles:
    """The master's etcd client certificate in `data_dir/pki` (made when missing,
    not the etcd CA's, or within 30 days of its end), with `pki/ca.crt` to check
    etcd's certificates. Makes the cluster CA if `data_dir` has none."""
    ca = etcd_ca(data_dir)
    directory = data_dir / "pki"
    files = EtcdClientFiles(
        ca=directory / "ca.crt",
        cert=directory / f"{CLIENT_NAME}.crt",
        key=directory / f"{CLIENT_NAME}.key",
    )
    if _client_stale(files, ca.cert_pem):
        issued = pki.issue(ca, identity.MASTER_USER, (), cluster_ca.days(validity))
        write_private(files.key, issued.key_pem.decode())
        write_private(files.cert, (issued.cert_pem + ca.cert_pem).decode())
    return files


# ------------------------------------------------------------ the command


def _owner(name: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise argparse.ArgumentTypeError(f"no user {name!r} on this machine") from None
    return entry.pw_uid, entry.pw_gid


def _addresses(text: str) -> list[str]:
    addresses = [a.strip() for a in text.split(",") if a.strip()]
    if not addresses:
        raise argparse.ArgumentTypeError("give at least one address")
    try:
        _split_addresses(addresses)
    except pki.PkiError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return addresses


def main(argv: list[str]) -> int:
    """`kubeling-master etcd-certs --name NAME --address IP[,IP...] --out DIR`."""
    from kubeling.master.main import default_data_dir

    parser = argparse.ArgumentParser(
        prog="kubeling-master etcd-certs",
        description="Make an etcd member's client and peer certificates from the cluster CA "
        "(made first if DATA_DIR has none, as at a master's first start).",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="the master's data dir")
    parser.add_argument("--name", required=True, help="the member's name (etcd --name)")
    parser.add_argument(
        "--address",
        type=_addresses,
        action="append",
        required=True,
        help="the member's IP or DNS name for the certificates (repeatable, or a comma list)",
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for the files")
    parser.add_argument(
        "--owner",
        type=_owner,
        default=None,
        help="user to own the files (Debian's etcd runs as `etcd`); default: the caller",
    )
    parser.add_argument(
        "--days", type=float, default=cluster_ca.DEFAULT_CERT_VALIDITY / 86400, help="validity"
    )
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    addresses = [a for group in args.address for a in group]
    out = args.out.absolute()
    try:
        files = issue_etcd_member(data_dir, args.name, addresses, out, args.days * 86400)
        if args.owner is not None:
            for path in (out, *sorted(out.iterdir())):
                os.chown(path, *args.owner)
    except (OSError, ValueError, pki.PkiError) as exc:
        print(f"kubeling-master etcd-certs: {exc}", file=sys.stderr)
        return 1
    ips, dns = _split_addresses(addresses)
    print(f"etcd member {args.name}: certificates from the cluster CA in {data_dir}/pki")
    print(f"  {out}/ ca.crt server.crt server.key peer.crt peer.key  (SANs {', '.join(dns + ips)})")
    if args.owner is None and _etcd_user_exists():
        print(f"  etcd runs as user etcd here: chown -R etcd:etcd {out} (or use --owner etcd)")
    print("etcd flags (--listen/--advertise URLs are https://):")
    print("  " + " \\\n  ".join(files.flags()))
    print("or in /etc/default/etcd:")
    for variable, value in files.environment().items():
        print(f"  {variable}={value}")
    return 0


def _etcd_user_exists() -> bool:
    try:
        pwd.getpwnam("etcd")
    except KeyError:
        return False
    return shutil.which("etcd") is not None
