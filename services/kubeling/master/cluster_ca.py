"""The cluster's CA and the master's own certificates, kept in `DATA_DIR/pki`.

At the first start the master makes the CA (`ca.crt`, `ca.key`); it is never
rewritten afterwards, since every node and user certificate hangs off it (a lost
CA means joining every node again). Around it, remade whenever needed:

- `server.crt`/`server.key`: the API's serving certificate. `server.crt` is the
  chain, the server certificate followed by the CA certificate, because a joining
  node has no CA yet: it reads the CA from the join port's chain and checks it
  against `--discovery-token-ca-cert-hash` before it sends its token. SANs:
  loopback, localhost, the hostname, every listen and join IP (a wildcard listen
  host stands for this machine's addresses), the advertise address, every
  `--tls-san`, and Kubernetes' in-cluster names (`kubernetes`,
  `kubernetes.default`, ...: common/targets.py MASTER_NAMES), which every master
  carries so that a client given a list of masters checks them all by one name.
  Remade when the wanted SANs change or it is within 30 days of expiry.
- `master.crt`/`master.key`: the master's client identity (CN=kubeling:master,
  O=system:masters) for its own controllers and for dialing kubelets.
- `admin.crt`/`admin.key`: the first admin (CN=kubeling-admin, O=system:masters),
  also written as `DATA_DIR/admin.conf` (client/config.py, PEMs inline, 0600).

Every file is mode 0600 in a 0700 directory (common/tls.py's CredentialDir).
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kubeling.client.config import ClientConfig
from kubeling.common import identity, pki
from kubeling.common.targets import MASTER_NAMES
from kubeling.common.tls import CredentialDir, Credentials
from kubeling.common.token import write_private

log = structlog.get_logger(__name__)

SERVER_CN = "kubeling-master"
ADMIN_USER = "kubeling-admin"
DEFAULT_CERT_VALIDITY = 365 * 24 * 3600.0
# Certificates this close to their end are made again at the next start.
RENEW_BEFORE = timedelta(days=30)
_WILDCARDS = ("", "0.0.0.0", "::")
_DNS_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
# Interfaces that carry pod traffic, not the machine's own address.
_POD_INTERFACE_PREFIXES = ("kubeling", "cni", "veth", "docker", "flannel")


def days(seconds: float) -> int:
    """common/pki takes validity in days; fractions work (it builds a timedelta),
    which tests with short-lived certificates rely on."""
    return cast(int, seconds / 86400.0)


def split_host(address: str) -> tuple[str, str]:
    """("10.0.0.1", "6443") from "10.0.0.1:6443" or "[::1]:6443"."""
    host, _, port = address.strip().rpartition(":")
    return host.strip("[]"), port


def host_port(host: str, port: int | str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def machine_addresses() -> list[str]:
    """This machine's global addresses (IPv4 and IPv6), pod interfaces left out."""
    try:
        out = subprocess.run(
            ["ip", "-j", "addr", "show", "scope", "global"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        found = []
        for link in json.loads(out or "[]"):
            if str(link.get("ifname", "")).startswith(_POD_INTERFACE_PREFIXES):
                continue
            found += [str(a["local"]) for a in link.get("addr_info", []) if a.get("local")]
        return found
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return []


def wanted_sans(
    listen: Iterable[str], advertise: str = "", extra: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """(IPs, DNS names) the serving certificate must carry, sorted."""
    ips = {"127.0.0.1", "::1"}
    dns = {"localhost", *MASTER_NAMES}
    hostname = socket.gethostname()
    if hostname and pki_dns_ok(hostname):
        dns.add(hostname)
    for address in listen:
        if not address.strip() or address.strip().startswith("unix:"):
            continue
        host, _ = split_host(address)
        if host in _WILDCARDS:
            ips.update(machine_addresses())
        elif is_ip(host):
            ips.add(str(ipaddress.ip_address(host)))
        else:
            dns.add(host)
    for name in (advertise, *extra):
        name = name.strip()
        if not name:
            continue
        if is_ip(name):
            ips.add(str(ipaddress.ip_address(name)))
        else:
            dns.add(name)
    return sorted(ips), sorted(dns)


def pki_dns_ok(name: str) -> bool:
    """Whether a host name can be a DNS SAN (a hostname with "_" cannot)."""
    return bool(_DNS_NAME.fullmatch(name))


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class ClusterCa:
    """The CA (certificate and key) and the directory of the master's credentials."""

    ca: pki.Issued
    directory: Path
    validity: float = DEFAULT_CERT_VALIDITY

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem

    @property
    def pin(self) -> str:
        """kubeadm's --discovery-token-ca-cert-hash for this CA."""
        return pki.ca_pin(self.ca.cert_pem)

    @property
    def server(self) -> CredentialDir:
        return CredentialDir(self.directory, "server")

    @property
    def master(self) -> CredentialDir:
        return CredentialDir(self.directory, "master")

    @property
    def admin(self) -> CredentialDir:
        return CredentialDir(self.directory, "admin")

    def master_credentials(self) -> Credentials:
        return self.master.load()

    def admin_credentials(self) -> Credentials:
        return self.admin.load()

    def sign(
        self,
        csr_pem: bytes,
        common_name: str,
        organizations: Sequence[str],
        *,
        server: bool,
        dns_names: Sequence[str] = (),
        ips: Sequence[str] = (),
    ) -> bytes:
        """A certificate for a CSR with exactly this subject, valid `validity` (PkiError)."""
        return pki.sign_csr(
            self.ca, csr_pem, common_name, organizations, days(self.validity),
            server=server, client=True, dns_names=dns_names, ips=ips,
        )  # fmt: skip


def load_or_create(
    data_dir: Path,
    listen: Iterable[str],
    advertise: str = "",
    tls_sans: Sequence[str] = (),
    validity: float = DEFAULT_CERT_VALIDITY,
) -> ClusterCa:
    """The CA of `data_dir/pki` (made at the first start) with the master's
    serving, client and admin credentials brought up to date."""
    directory = data_dir / "pki"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca_crt, ca_key = directory / "ca.crt", directory / "ca.key"
    if ca_crt.exists() and ca_key.exists():
        ca = pki.Issued(ca_crt.read_bytes(), ca_key.read_bytes())
    elif ca_crt.exists() or ca_key.exists():
        raise ValueError(
            f"{directory} has only one of ca.crt and ca.key: restore the other (every node's "
            "certificate depends on this CA), or move both away to make a new CA"
        )
    else:
        ca = pki.make_ca("kubeling-ca")
        write_private(ca_key, ca.key_pem.decode())
        write_private(ca_crt, ca.cert_pem.decode())
        log.info("cluster CA created", directory=str(directory), pin=pki.ca_pin(ca.cert_pem))
    cluster = ClusterCa(ca, directory, validity)
    ips, dns = wanted_sans(listen, advertise, tls_sans)
    _ensure(cluster, "server", SERVER_CN, (), server=True, ips=ips, dns=dns, chain=True)
    _ensure(cluster, "master", identity.MASTER_USER, (identity.GROUP_MASTERS,))
    _ensure(cluster, "admin", ADMIN_USER, (identity.GROUP_MASTERS,))
    return cluster


def _ensure(
    cluster: ClusterCa,
    name: str,
    common_name: str,
    groups: Sequence[str],
    *,
    server: bool = False,
    ips: Sequence[str] = (),
    dns: Sequence[str] = (),
    chain: bool = False,
) -> None:
    """(Re)make credential `name` unless the one on disk is from this CA, has the
    wanted SANs and is not close to its end."""
    where = CredentialDir(cluster.directory, name)
    reason = _stale(where, cluster.ca_pem, ips, dns) if where.exists() else "missing"
    if not reason:
        return
    issued = pki.issue(
        cluster.ca, common_name, groups, days(cluster.validity),
        server=server, client=not server, dns_names=dns, ips=ips,
    )  # fmt: skip
    cert = issued.cert_pem + (cluster.ca_pem if chain else b"")
    # Key first, certificate last (a reader that sees the new certificate finds its
    # key); ca.crt is not touched: it is the CA's own file.
    write_private(where.key, issued.key_pem.decode())
    write_private(where.cert, cert.decode())
    log.info("certificate made", name=name, subject=common_name, reason=reason)


def _stale(where: CredentialDir, ca_pem: bytes, ips: Sequence[str], dns: Sequence[str]) -> str:
    """Why the credential must be made again ("" if it need not)."""
    try:
        cert = where.cert.read_bytes()
        info = pki.cert_info(cert)
        where.key.read_bytes()
    except (OSError, pki.PkiError):
        return "unreadable"
    if not _issued_by(cert, ca_pem):
        return "signed by another CA"
    if info.not_after - datetime.now(UTC) < RENEW_BEFORE:
        return "expires soon"
    if (ips or dns) and (sorted(info.ips) != sorted(ips) or sorted(info.dns_names) != sorted(dns)):
        return "addresses changed"
    return ""


def _issued_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
    except Exception:  # a bad signature, another issuer, an odd algorithm: not ours
        return False
    return True


def admin_server(listen: str, port: int, advertise: str = "") -> str:
    """The address admin.conf names: the advertise address, else the first TCP
    listen address (a wildcard host as 127.0.0.1), with the bound port."""
    addresses = [a.strip() for a in listen.split(",") if a.strip()]
    tcp = [a for a in addresses if not a.startswith("unix:")]
    if not tcp:
        return addresses[0] if addresses else host_port("127.0.0.1", port)
    host, _ = split_host(tcp[0])
    if advertise:
        host = advertise
    elif host in _WILDCARDS:
        host = "127.0.0.1"
    # The bound port is the first listen address's (port 0 picks one).
    if addresses[0].startswith("unix:"):
        port = int(split_host(tcp[0])[1] or 6443)
    return host_port(host, port)


def write_admin_conf(cluster: ClusterCa, path: Path, server: str) -> None:
    """`path` (0600): the admin credential and the master's address, PEMs inline."""
    admin = cluster.admin.load()
    config = ClientConfig(server, Credentials(cluster.ca_pem, admin.cert_pem, admin.key_pem))
    text = config.to_yaml()
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    write_private(path, text)
    log.info("admin credential written", path=str(path), server=server)


def derive_secret(ca_key_pem: bytes, info: bytes, length: int) -> bytes:
    """`length` bytes derived (HKDF-SHA256, `info` naming the one use) from the cluster
    CA's private key: the same on every master holding `pki/ca.key`, so a key made
    this way (the etcd CA's, the Secrets encryption key) needs no copying of its own."""
    try:
        key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise pki.PkiError(f"the cluster CA's key is not usable: {exc}") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        value = key.private_numbers().private_value
    elif isinstance(key, rsa.RSAPrivateKey):
        value = key.private_numbers().d
    else:
        raise pki.PkiError(f"the cluster CA's key is a {type(key).__name__}: EC or RSA expected")
    material = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return HKDF(hashes.SHA256(), length=length, salt=None, info=info).derive(material)
