"""A real three-member etcd on mutual TLS with certificates from master/etcd_pki.py.

The members get their certificates from `issue_etcd_member` and run with the flags
`kubeling-master etcd-certs` prints (client and peer certificates required, peers
must carry the peer CN). Checked with Debian's etcdctl and with Python gRPC (the
master's own TLS stack): the master's etcd client certificate works; no
certificate, a certificate from another CA, and certificates the cluster CA signs
for nodes or for the master's API identity are all refused; the three members
reach each other over TLS (the cluster is healthy), and the peer port refuses a
client certificate that is not a peer's. Finally the walk-through of deploy/README.md:
two TLS masters on this etcd, the second given only the cluster CA, are one cluster.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubeling.client import Client
from kubeling.common import pki
from kubeling.common.token import write_private
from kubeling.master import etcd_pki
from kubeling.master.etcd_pki import EtcdClientFiles
from kubeling.v1 import core_pb2
from tests.support.etcd import EtcdCluster, EtcdTlsFiles, require_etcd
from tests.support.processes import MasterProcess

ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
MEMBERS = ("etcd0", "etcd1", "etcd2")


class StrictPeerEtcd(EtcdCluster):
    """tests/support's cluster plus the one flag etcd-certs adds to it: peers must
    present the peer certificate's CN."""

    def _command(self, member):  # type: ignore[no-untyped-def]
        return [*super()._command(member), f"--peer-cert-allowed-cn={etcd_pki.PEER_CN}"]


@dataclass
class TlsEtcd:
    cluster: EtcdCluster
    data_dir: Path
    certs: Path
    client: EtcdClientFiles


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEtcd]:
    require_etcd()
    if not Path(ETCDCTL).exists():
        pytest.skip("etcdctl is not installed (apt-get install etcd-client)")
    base = tmp_path_factory.mktemp("etcd-tls")
    data_dir, certs = base / "master", base / "certs"
    for name in MEMBERS:
        etcd_pki.issue_etcd_member(data_dir, name, ["127.0.0.1"], certs / name)
    client = etcd_pki.ensure_etcd_client(data_dir)
    tls = EtcdTlsFiles.issued_in(certs)
    cluster = StrictPeerEtcd(base / "members", members=len(MEMBERS), tls=tls)
    (base / "members").mkdir()
    try:
        cluster.start()
        yield TlsEtcd(cluster, data_dir, certs, client)
    finally:
        cluster.close()


def etcdctl(
    etcd: TlsEtcd,
    *args: str,
    cert: Path | None = None,
    key: Path | None = None,
    endpoints: str = "",
) -> subprocess.CompletedProcess[str]:
    command = [
        ETCDCTL,
        "--endpoints", endpoints or etcd.cluster.endpoints,
        # What the master checks etcd with: the cluster CA (the chain carries the etcd CA).
        "--cacert", str(etcd.client.ca),
        "--dial-timeout", "3s",
        "--command-timeout", "5s",
    ]  # fmt: skip
    if cert is not None and key is not None:
        command += ["--cert", str(cert), "--key", str(key)]
    env = {**os.environ, "ETCDCTL_API": "3"}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=env, timeout=30, check=False
    )


def write_pair(directory: Path, name: str, issued: pki.Issued) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    write_private(cert, issued.cert_pem.decode())
    write_private(key, issued.key_pem.decode())
    return cert, key


def stored(etcd: TlsEtcd, key: str) -> str:
    """The value of `key` as the master's client reads it ("" when absent)."""
    got = etcdctl(etcd, "get", key, "--print-value-only", cert=etcd.client.cert,
                  key=etcd.client.key)  # fmt: skip
    assert got.returncode == 0, got.stderr
    return got.stdout.strip()


def test_master_client_certificate_writes_and_reads(tls_etcd: TlsEtcd) -> None:
    client = tls_etcd.client
    for index, _ in enumerate(MEMBERS):
        endpoint = tls_etcd.cluster.endpoint(index)
        put = etcdctl(tls_etcd, "put", f"/test/tls/{index}", f"v{index}",
                      cert=client.cert, key=client.key, endpoints=endpoint)  # fmt: skip
        assert put.returncode == 0, put.stderr
    for index, _ in enumerate(MEMBERS):
        # Written through one member, read back through the whole cluster.
        assert stored(tls_etcd, f"/test/tls/{index}") == f"v{index}"
    assert client_port_reply(tls_etcd, client.cert, client.key) == "HTTP/1.1 200 OK"


def test_without_a_client_certificate_etcd_refuses(tls_etcd: TlsEtcd) -> None:
    put = etcdctl(tls_etcd, "put", "/test/tls/anonymous", "x")
    assert put.returncode != 0
    assert client_port_reply(tls_etcd, None, None).startswith("refused: ")
    assert stored(tls_etcd, "/test/tls/anonymous") == ""


def test_a_certificate_from_another_ca_is_refused(tls_etcd: TlsEtcd, tmp_path: Path) -> None:
    other = pki.make_ca("someone-elses-ca")
    # Same subject as the master's, and a real client certificate: only the issuer differs.
    cert, key = write_pair(tmp_path, "other", pki.issue(other, etcd_pki.identity.MASTER_USER))
    put = etcdctl(tls_etcd, "put", "/test/tls/other-ca", "x", cert=cert, key=key)
    assert put.returncode != 0
    assert client_port_reply(tls_etcd, cert, key).startswith("refused: ")
    assert stored(tls_etcd, "/test/tls/other-ca") == ""


@pytest.mark.parametrize(
    ("who", "organizations"),
    [("system:node:worker-1", ("system:nodes",)), ("kubeling:master", ("system:masters",))],
)
def test_cluster_ca_certificates_for_the_api_are_refused(
    tls_etcd: TlsEtcd, tmp_path: Path, who: str, organizations: tuple[str, ...]
) -> None:
    """What the cluster CA signs for nodes and users (and the master's API identity)
    opens the API, where authorization applies, never the store behind it."""
    cluster = pki.Issued(
        (tls_etcd.data_dir / "pki" / "ca.crt").read_bytes(),
        (tls_etcd.data_dir / "pki" / "ca.key").read_bytes(),
    )
    cert, key = write_pair(tmp_path, "api", pki.issue(cluster, who, organizations))
    put = etcdctl(tls_etcd, "put", "/test/tls/node", "x", cert=cert, key=key)
    assert put.returncode != 0
    assert client_port_reply(tls_etcd, cert, key).startswith("refused: ")
    assert stored(tls_etcd, "/test/tls/node") == ""


def test_members_reach_each_other_over_tls(tls_etcd: TlsEtcd) -> None:
    client = tls_etcd.client
    health = etcdctl(tls_etcd, "endpoint", "health", cert=client.cert, key=client.key)
    assert health.returncode == 0, health.stderr
    assert (health.stdout + health.stderr).count("is healthy") == len(MEMBERS)
    members = etcdctl(tls_etcd, "member", "list", cert=client.cert, key=client.key)
    assert members.returncode == 0, members.stderr
    lines = members.stdout.strip().splitlines()
    assert sorted(line.split(", ")[2] for line in lines) == list(MEMBERS)
    assert all(", started, " in line and "https://127.0.0.1:" in line for line in lines)


def tls_reply(etcd: TlsEtcd, port: int, path: str, cert: Path | None, key: Path | None) -> str:
    """The HTTP status line a member's port gives to GET `path` over TLS with this
    client certificate (or none), or "refused: REASON" when TLS refuses it."""
    context = ssl.create_default_context(cafile=str(etcd.client.ca))
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            # The status line arrives in the first record (TLS 1.3 reports a refused
            # client certificate here too, as an alert).
            return tls.recv(65536).split(b"\r\n", 1)[0].decode()
    except ssl.SSLError as exc:
        return f"refused: {exc.reason or exc}"


def client_port_reply(etcd: TlsEtcd, cert: Path | None, key: Path | None) -> str:
    return tls_reply(etcd, etcd.cluster.members[0].client_port, "/health", cert, key)


def test_peer_port_takes_only_peer_certificates(tls_etcd: TlsEtcd) -> None:
    peer = tls_etcd.certs / "etcd1"
    port = tls_etcd.cluster.members[0].peer_port
    assert tls_reply(tls_etcd, port, "/members", peer / "peer.crt", peer / "peer.key") == (
        "HTTP/1.1 200 OK"
    )
    # The master's client certificate is from the etcd CA too, but it is no peer.
    reply = tls_reply(tls_etcd, port, "/members", tls_etcd.client.cert, tls_etcd.client.key)
    assert reply.startswith("refused: "), reply


def test_python_grpc_reaches_etcd_with_the_client_files(tls_etcd: TlsEtcd) -> None:
    """The master's stack (gRPC, BoringSSL) verifies etcd against the cluster CA and
    is let in with its etcd client certificate; another CA's certificate is not."""

    def check(credentials: grpc.ChannelCredentials) -> int:
        with grpc.secure_channel(tls_etcd.cluster.endpoint(1), credentials) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            return int(reply.status)

    assert check(tls_etcd.client.channel_credentials()) == health_pb2.HealthCheckResponse.SERVING
    other = pki.issue(pki.make_ca("someone-elses-ca"), "kubeling:master")
    foreign = grpc.ssl_channel_credentials(
        tls_etcd.client.ca.read_bytes(), other.key_pem, other.cert_pem
    )
    with pytest.raises(grpc.RpcError) as refused:
        check(foreign)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_masters_given_only_the_cluster_ca_share_the_tls_etcd(
    tls_etcd: TlsEtcd, tmp_path: Path
) -> None:
    """Master 1 runs on the data dir `etcd-certs` made; master 2 gets only ca.crt
    and ca.key, makes its own etcd client certificate, and reads what master 1
    wrote: the etcd CA is the same on both without its key being copied."""
    store = ("--store", f"etcd://{tls_etcd.cluster.endpoints}", "--etcd-prefix", "/kubeling-e2e")
    first = MasterProcess(tls_etcd.data_dir, None, "--controllers=", *store, tls=True)
    second_dir = tmp_path / "second"
    (second_dir / "pki").mkdir(parents=True, mode=0o700)
    for name in ("ca.crt", "ca.key"):
        shutil.copy2(tls_etcd.data_dir / "pki" / name, second_dir / "pki" / name)
    second = MasterProcess(second_dir, None, "--controllers=", *store, tls=True)

    async def create(master: MasterProcess, name: str) -> None:
        async with Client.from_config(master.admin_conf, timeout=10) as api:
            node = core_pb2.Node()
            node.metadata.name = name
            await api.nodes.create(node)

    async def names(master: MasterProcess) -> set[str]:
        async with Client.from_config(master.admin_conf, timeout=10) as api:
            return {node.metadata.name for node in (await api.nodes.list()).items}

    try:
        first.start()
        asyncio.run(create(first, "written-through-1"))
        second.start()
        assert (second_dir / "pki" / "etcd-client.crt").exists()
        assert not any("etcd-ca.key" in p.name for p in (second_dir / "pki").iterdir())
        assert asyncio.run(names(second)) == {"written-through-1"}
        asyncio.run(create(second, "written-through-2"))
        assert asyncio.run(names(first)) == {"written-through-1", "written-through-2"}
    finally:
        second.stop()
        first.stop()
