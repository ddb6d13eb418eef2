"""etcd's certificates (master/etcd_pki.py) without running etcd: what a member's and
a master's files hold (subjects, SANs, usages, chains, modes), that only the etcd
CA (not the cluster CA's other certificates) leads to them, that every master with
the same cluster CA has the same etcd CA, and when the client certificate is made
again. tests/integration/test_etcd_tls.py runs a real etcd on them."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubeling.common import pki
from kubeling.master import etcd_pki
from kubeling.master.main import main as master_main

SERVER_AND_CLIENT = {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        {str(ip) for ip in names.get_values_for_type(x509.IPAddress)},
        set(names.get_values_for_type(x509.DNSName)),
    )


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # another issuer or a bad signature
        return False
    return True


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def root_of(data_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((data_dir / "pki" / "ca.crt").read_bytes())


def test_member_files_sans_usages_chain_and_modes(tmp_path: Path) -> None:
    data, out = tmp_path / "master", tmp_path / "etcd1"
    files = etcd_pki.issue_etcd_member(data, "etcd1", ["10.0.0.11", "m1.example", "fd00::11"], out)
    assert sorted(p.name for p in out.iterdir()) == [
        "ca.crt", "peer.crt", "peer.key", "server.crt", "server.key",
    ]  # fmt: skip
    assert mode(out) == 0o700
    assert mode(files.server_key) == mode(files.peer_key) == 0o600

    etcd_ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    assert common_name(etcd_ca) == etcd_pki.ETCD_CA_CN
    constraints = etcd_ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    assert issued_by(etcd_ca, root_of(data))

    for path, cn in ((files.server_cert, "etcd1"), (files.peer_cert, etcd_pki.PEER_CN)):
        leaf, intermediate = chain(path)
        assert common_name(leaf) == cn
        assert usages(leaf) == SERVER_AND_CLIENT
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert sans(leaf) == (
            {"10.0.0.11", "fd00::11", "127.0.0.1", "::1"},
            {"m1.example", "localhost"},
        )
        # Signed by the etcd CA, which the file carries for clients trusting only the root.
        assert issued_by(leaf, etcd_ca) and not issued_by(leaf, root_of(data))
        assert intermediate == etcd_ca


def test_the_cluster_ca_is_made_when_missing_and_reused_after(tmp_path: Path) -> None:
    data = tmp_path / "master"
    etcd_pki.issue_etcd_member(data, "etcd0", ["127.0.0.1"], tmp_path / "a")
    pki_dir = data / "pki"
    assert (pki_dir / "ca.crt").exists() and (pki_dir / "ca.key").exists()
    # Made as at a master's first start: with the master's own certificates.
    assert (pki_dir / "server.crt").exists() and (pki_dir / "admin.crt").exists()
    assert mode(pki_dir) == 0o700 and mode(pki_dir / "ca.key") == 0o600
    before = {p.name: p.read_bytes() for p in pki_dir.iterdir()}
    etcd_pki.issue_etcd_member(data, "etcd1", ["127.0.0.2"], tmp_path / "b")
    # An existing CA is only read: not one of the master's files changes.
    assert {p.name: p.read_bytes() for p in pki_dir.iterdir()} == before
    assert chain(tmp_path / "a" / "server.crt")[1] == chain(tmp_path / "b" / "server.crt")[1]


def test_half_a_cluster_ca_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "master"
    (data / "pki").mkdir(parents=True)
    (data / "pki" / "ca.crt").write_bytes(pki.make_ca().cert_pem)
    with pytest.raises(ValueError, match=r"only one of ca\.crt and ca\.key"):
        etcd_pki.ensure_etcd_client(data)


def test_client_certificate_for_the_master(tmp_path: Path) -> None:
    data = tmp_path / "master"
    files = etcd_pki.ensure_etcd_client(data)
    assert files == etcd_pki.EtcdClientFiles(
        ca=data / "pki" / "ca.crt",
        cert=data / "pki" / "etcd-client.crt",
        key=data / "pki" / "etcd-client.key",
    )
    assert mode(files.key) == mode(files.cert) == 0o600
    leaf, intermediate = chain(files.cert)
    assert common_name(leaf) == "kubeling:master"
    assert usages(leaf) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert issued_by(intermediate, root_of(data)) and issued_by(leaf, intermediate)
    credentials = files.credentials()
    assert credentials.ca_pem == (data / "pki" / "ca.crt").read_bytes()
    assert files.channel_credentials() is not None


def test_client_certificate_is_made_once(tmp_path: Path) -> None:
    data = tmp_path / "master"
    first = etcd_pki.ensure_etcd_client(data)
    cert, key = first.cert.read_bytes(), first.key.read_bytes()
    again = etcd_pki.ensure_etcd_client(data)
    assert (again.cert.read_bytes(), again.key.read_bytes()) == (cert, key)


def test_client_certificate_is_remade_near_its_end(tmp_path: Path) -> None:
    data = tmp_path / "master"
    # Valid less than RENEW_BEFORE (30 days): every call makes a new one.
    short = 10 * 86400.0
    first = etcd_pki.ensure_etcd_client(data, validity=short).cert.read_bytes()
    second = etcd_pki.ensure_etcd_client(data).cert.read_bytes()
    assert first != second
    end = chain(data / "pki" / "etcd-client.crt")[0].not_valid_after_utc
    assert end - datetime.now(UTC) > timedelta(days=300)


def test_client_certificate_is_remade_when_its_key_does_not_match(tmp_path: Path) -> None:
    data = tmp_path / "master"
    files = etcd_pki.ensure_etcd_client(data)
    old_cert = files.cert.read_bytes()
    # A crash between writing the key and the certificate.
    files.key.write_bytes(pki.make_key())
    etcd_pki.ensure_etcd_client(data)
    assert files.cert.read_bytes() != old_cert
    assert files.credentials().cert_pem == files.cert.read_bytes()
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert chain(files.cert)[0].public_key().public_bytes(*spki) == (
        key.public_key().public_bytes(*spki)
    )


def test_client_certificate_from_another_ca_is_replaced(tmp_path: Path) -> None:
    data = tmp_path / "master"
    files = etcd_pki.ensure_etcd_client(data)
    stranger = pki.issue(pki.make_ca("someone-else"), "kubeling:master")
    files.key.write_bytes(stranger.key_pem)
    files.cert.write_bytes(stranger.cert_pem)
    etcd_pki.ensure_etcd_client(data)
    etcd_ca = x509.load_pem_x509_certificate((data / "pki" / "etcd-ca.crt").read_bytes())
    assert issued_by(chain(files.cert)[0], etcd_ca)


def test_every_master_with_the_cluster_ca_has_the_same_etcd_ca(tmp_path: Path) -> None:
    """Master 2 gets only ca.crt and ca.key; its etcd client certificate is still
    accepted by members whose certificates master 1 made."""
    first, second = tmp_path / "m1", tmp_path / "m2"
    member = etcd_pki.issue_etcd_member(first, "etcd0", ["127.0.0.1"], tmp_path / "etcd0")
    (second / "pki").mkdir(parents=True)
    for name in ("ca.crt", "ca.key"):
        shutil.copy2(first / "pki" / name, second / "pki" / name)
    client = etcd_pki.ensure_etcd_client(second)
    trusted_by_member = x509.load_pem_x509_certificate(member.ca.read_bytes())
    assert issued_by(chain(client.cert)[0], trusted_by_member)
    # A master of another cluster (another CA) gets another etcd CA.
    stranger = etcd_pki.ensure_etcd_client(tmp_path / "m3")
    assert not issued_by(chain(stranger.cert)[0], trusted_by_member)


def test_the_etcd_ca_does_not_accept_the_cluster_cas_other_certificates(tmp_path: Path) -> None:
    data = tmp_path / "master"
    member = etcd_pki.issue_etcd_member(data, "etcd0", ["127.0.0.1"], tmp_path / "etcd0")
    trusted = x509.load_pem_x509_certificate(member.ca.read_bytes())
    master_api = x509.load_pem_x509_certificate((data / "pki" / "master.crt").read_bytes())
    assert issued_by(master_api, root_of(data))
    assert not issued_by(master_api, trusted)


def test_etcd_ca_certificate_is_remade_with_the_same_key(tmp_path: Path) -> None:
    data = tmp_path / "master"
    member = etcd_pki.issue_etcd_member(data, "etcd0", ["127.0.0.1"], tmp_path / "etcd0")
    (data / "pki" / etcd_pki.ETCD_CA_CERT).unlink()
    client = etcd_pki.ensure_etcd_client(data)
    remade = x509.load_pem_x509_certificate((data / "pki" / etcd_pki.ETCD_CA_CERT).read_bytes())
    assert remade != x509.load_pem_x509_certificate(member.ca.read_bytes())
    # Old member certificates and new client certificates: one key, one CA.
    assert issued_by(chain(member.server_cert)[0], remade)
    assert issued_by(chain(client.cert)[0], x509.load_pem_x509_certificate(member.ca.read_bytes()))


@pytest.mark.parametrize("address", ["not an address", "a_b.example", "10.0.0.1/24"])
def test_bad_addresses_are_refused(tmp_path: Path, address: str) -> None:
    with pytest.raises(pki.PkiError, match="neither an IP address nor a DNS name"):
        etcd_pki.issue_etcd_member(tmp_path / "m", "etcd0", [address], tmp_path / "out")


def test_the_flags_name_the_files(tmp_path: Path) -> None:
    files = etcd_pki.EtcdMemberFiles(tmp_path / "etcd0", "etcd0")
    assert files.flags() == [
        f"--cert-file={tmp_path}/etcd0/server.crt",
        f"--key-file={tmp_path}/etcd0/server.key",
        f"--trusted-ca-file={tmp_path}/etcd0/ca.crt",
        "--client-cert-auth",
        f"--peer-cert-file={tmp_path}/etcd0/peer.crt",
        f"--peer-key-file={tmp_path}/etcd0/peer.key",
        f"--peer-trusted-ca-file={tmp_path}/etcd0/ca.crt",
        "--peer-client-cert-auth",
        "--peer-cert-allowed-cn=kubeling:etcd-peer",
    ]
    assert files.environment()["ETCD_PEER_CERT_ALLOWED_CN"] == etcd_pki.PEER_CN


def test_etcd_certs_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, out = tmp_path / "master", tmp_path / "etcd2"
    # Handing the files to another user takes root (as installing etcd does).
    owner = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    with pytest.raises(SystemExit) as done:
        master_main(["etcd-certs", "--data-dir", str(data), "--name", "etcd2",
                     "--address", "10.0.0.13,m3.example", "--address", "10.1.0.13",
                     "--out", str(out), "--owner", owner, "--days", "40"])  # fmt: skip
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert f"--cert-file={out}/server.crt" in printed
    assert f"ETCD_TRUSTED_CA_FILE={out}/ca.crt" in printed
    leaf = chain(out / "server.crt")[0]
    assert common_name(leaf) == "etcd2"
    assert sans(leaf)[0] >= {"10.0.0.13", "10.1.0.13"} and "m3.example" in sans(leaf)[1]
    assert timedelta(days=39) < leaf.not_valid_after_utc - datetime.now(UTC) < timedelta(days=41)
    uid = pwd.getpwnam(owner).pw_uid
    assert {p.stat().st_uid for p in (out, *out.iterdir())} == {uid}
    assert mode(out / "server.key") == 0o600


def test_etcd_certs_subcommand_reports_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        master_main(["etcd-certs", "--data-dir", str(tmp_path / "m"), "--name", "etcd0",
                     "--address", "bad address", "--out", str(tmp_path / "o")])  # fmt: skip
    assert done.value.code == 2
    assert "neither an IP address nor a DNS name" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # A name that cannot be a certificate subject.
    with pytest.raises(SystemExit) as done:
        master_main(["etcd-certs", "--data-dir", str(tmp_path / "m"), "--name", "a,b",
                     "--address", "10.0.0.1", "--out", str(tmp_path / "o")])  # fmt: skip
    assert done.value.code == 1
    assert "not a usable name" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
