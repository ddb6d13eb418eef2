"""kubeling.v1.Certificates on a TLS master (master/certificates.py): Join with a
bootstrap token on the join port, Renew of one's own certificate, IssueUser by
admins only."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from kubeling.client import Client
from kubeling.common import identity, pki
from kubeling.common.rpc import channel as make_channel
from kubeling.common.tls import Credentials
from kubeling.common.token import generate
from kubeling.master.server import Master
from kubeling.v1 import certificates_pb2, certificates_pb2_grpc
from tests.integration.test_tls_master import credentials, refused
from tests.support.inprocess import in_process_master, tls_master

Code = grpc.StatusCode


def join_stub(master: Master) -> tuple[grpc.aio.Channel, certificates_pb2_grpc.CertificatesStub]:
    """The join port, as a new node sees it: the CA (from its pin), no certificate."""
    assert master.ca is not None
    creds = grpc.ssl_channel_credentials(root_certificates=master.ca.ca_pem)
    channel = grpc.aio.secure_channel(f"127.0.0.1:{master.join_port}", creds)
    return channel, certificates_pb2_grpc.CertificatesStub(channel)


def stub_as(master: Master, creds: Credentials) -> certificates_pb2_grpc.CertificatesStub:
    """The main port as the holder of `creds` (the channel ends with the test's loop)."""
    assert master.server is not None
    target = f"127.0.0.1:{master.server.port}"
    return certificates_pb2_grpc.CertificatesStub(make_channel(target, credentials=creds))


def join_request(
    token: str, name: str = "w1", role: str = "node", cn: str = "", *addresses: str
) -> tuple[certificates_pb2.JoinRequest, bytes]:
    key = pki.make_key()
    if not cn:
        cn = (identity.NODE_PREFIX if role == "node" else identity.PROXY_PREFIX) + name
    group = identity.GROUP_NODES if role == "node" else identity.GROUP_PROXIES
    csr = pki.make_csr(key, cn, (group,))
    request = certificates_pb2.JoinRequest(
        token=token, role=role, node_name=name, csr=csr, addresses=list(addresses or ["10.1.0.5"])
    )
    return request, key


async def test_join_with_a_valid_token_gives_a_node_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with tls_master(tmp_path) as (master, _):
        assert master.ca is not None
        token, _stored = await master.tokens.issue(ttl=3600)
        channel, stub = join_stub(master)
        async with channel:
            request, key = join_request(token, "w1", "node", "", "10.1.0.5", "127.0.0.1")
            reply = await stub.Join(request, timeout=10)
            info = pki.cert_info(reply.certificate)
            assert (info.common_name, info.organizations) == ("system:node:w1", ("system:nodes",))
            assert info.dns_names == ("w1",)
            assert sorted(info.ips) == ["10.1.0.5", "127.0.0.1"]
            assert reply.ca == master.ca.ca_pem
            assert pki.ca_pin(reply.ca) == master.ca.pin
            assert reply.not_after.seconds == int(info.not_after.timestamp())

            proxy_request, _ = join_request(token, "w1", "proxy")
            proxy = pki.cert_info((await stub.Join(proxy_request, timeout=10)).certificate)
            assert proxy.common_name == "system:kube-proxy:w1"
            assert proxy.organizations == ("system:node-proxiers",)
            # The join port serves nothing else.
            await refused(
                stub.IssueUser(certificates_pb2.IssueUserRequest(), timeout=5),
                Code.UNAUTHENTICATED,
            )

        # The certificate is the node's identity on the main port.
        node_creds = Credentials(master.ca.ca_pem, reply.certificate, key)
        assert master.server is not None
        async with Client(f"127.0.0.1:{master.server.port}", credentials=node_creds) as w1:
            await w1.nodes.list()
            await refused(w1.pods.list())
    out = capsys.readouterr()
    secret = token.partition(".")[2]
    assert secret not in out.out + out.err


@pytest.mark.parametrize("case", ["missing", "malformed", "unknown", "deleted", "expired"])
async def test_join_refuses_bad_tokens(tmp_path: Path, case: str) -> None:
    async with tls_master(tmp_path) as (master, _):
        token, stored = await master.tokens.issue(ttl=60)
        expected = {
            "missing": "joining needs a bootstrap token",
            "malformed": "malformed bootstrap token",
            "unknown": "unknown bootstrap token",
            "deleted": "unknown bootstrap token",
            "expired": f"bootstrap token {stored.id} expired at",
        }[case]
        if case == "missing":
            token = ""
        elif case == "malformed":
            token = "not-a-token"
        elif case == "unknown":
            token = generate()
        elif case == "deleted":
            assert await master.tokens.remove(stored.id)
        else:
            master.tokens._clock = lambda: time.time() + 120
        channel, stub = join_stub(master)
        async with channel:
            request, _ = join_request(token)
            details = await refused(stub.Join(request, timeout=5), Code.UNAUTHENTICATED)
        assert expected in details


async def test_join_checks_subject_name_and_addresses(tmp_path: Path) -> None:
    async with tls_master(tmp_path) as (master, _):
        token, _ = await master.tokens.issue()
        channel, stub = join_stub(master)
        async with channel:
            bad = [
                join_request(token, "w1", "node", "system:node:w2"),  # another node's name
                join_request(token, "w1", "node", "kubeling-admin"),
                join_request(token, "w1", "admin"),
                join_request(token, "W1_!", "node"),
                join_request(token, "w1", "node", "", "0.0.0.0"),
                join_request(token, "w1", "node", "", "224.0.0.1"),
                join_request(token, "w1", "node", "", "not-an-ip"),
                join_request(token, "x" * 60, "node", "system:node:x"),  # CN too long
                # Names clients accept as a master's (a master list, a unix socket).
                join_request(token, "kubernetes", "node"),
                join_request(token, "kubernetes.default.svc", "node"),
                join_request(token, "localhost", "node"),
            ]
            for request, _ in bad:
                await refused(stub.Join(request, timeout=5), Code.INVALID_ARGUMENT)
            garbage, _ = join_request(token)
            garbage.csr = b"-----BEGIN CERTIFICATE REQUEST-----\nxx\n"
            assert "csr" in await refused(stub.Join(garbage, timeout=5), Code.INVALID_ARGUMENT)


async def test_a_master_reachable_by_others_refuses_loopback_sans(tmp_path: Path) -> None:
    from kubeling.master.certificates import address_errors

    assert address_errors(["127.0.0.1"], loopback_allowed=True) == []
    errors = address_errors(["127.0.0.1", "::1", "10.0.0.1"], loopback_allowed=False)
    assert [e.field for e in errors] == ["addresses[0]", "addresses[1]"]


async def test_renew_keeps_the_callers_own_subject(tmp_path: Path) -> None:
    async with tls_master(tmp_path) as (master, _):
        node_creds = credentials(master, "system:node:w1", identity.GROUP_NODES)
        stub = stub_as(master, node_creds)
        key = pki.make_key()
        own = pki.make_csr(key, "system:node:w1", (identity.GROUP_NODES,))
        reply = await stub.Renew(
            certificates_pb2.RenewRequest(csr=own, addresses=["10.1.0.9"]), timeout=5
        )
        info = pki.cert_info(reply.certificate)
        assert info.common_name == "system:node:w1" and info.ips == ("10.1.0.9",)
        other = pki.make_csr(key, "system:node:w2", (identity.GROUP_NODES,))
        await refused(stub.Renew(certificates_pb2.RenewRequest(csr=other), timeout=5),
                      Code.INVALID_ARGUMENT)  # fmt: skip
        admin = pki.make_csr(key, "system:node:w1", (identity.GROUP_MASTERS,))
        await refused(stub.Renew(certificates_pb2.RenewRequest(csr=admin), timeout=5),
                      Code.INVALID_ARGUMENT)  # fmt: skip
        viewer = stub_as(master, credentials(master, "alice", identity.GROUP_VIEW))
        csr = pki.make_csr(key, "alice", (identity.GROUP_VIEW,))
        renewed = await viewer.Renew(certificates_pb2.RenewRequest(csr=csr), timeout=5)
        assert pki.cert_info(renewed.certificate).organizations == (identity.GROUP_VIEW,)


async def test_issue_user_is_for_admins(tmp_path: Path) -> None:
    async with tls_master(tmp_path) as (master, admin):
        key = pki.make_key()
        csr = pki.make_csr(key, "bob", (identity.GROUP_VIEW,))
        request = certificates_pb2.IssueUserRequest(name="bob", role="view", csr=csr)
        editor = stub_as(master, credentials(master, "eve", identity.GROUP_EDIT))
        details = await refused(editor.IssueUser(request, timeout=5))
        assert 'user "eve"' in details and "certificates/users" in details
        node = stub_as(master, credentials(master, "system:node:w1", identity.GROUP_NODES))
        await refused(node.IssueUser(request, timeout=5))

        stub = certificates_pb2_grpc.CertificatesStub(admin.channel)
        reply = await stub.IssueUser(request, timeout=5)
        info = pki.cert_info(reply.certificate)
        assert (info.common_name, info.organizations) == ("bob", (identity.GROUP_VIEW,))
        for name, role in (("system:bob", "view"), ("kubeling:x", "admin"), ("bob", "root"),
                           ("kubernetes", "view"), ("localhost", "edit")):  # fmt: skip
            bad = certificates_pb2.IssueUserRequest(name=name, role=role, csr=csr)
            await refused(stub.IssueUser(bad, timeout=5), Code.INVALID_ARGUMENT)
        # The CSR must ask for the role's group.
        wrong = certificates_pb2.IssueUserRequest(name="bob", role="admin", csr=csr)
        await refused(stub.IssueUser(wrong, timeout=5), Code.INVALID_ARGUMENT)


async def test_a_master_without_tls_issues_nothing(tmp_path: Path) -> None:
    async with in_process_master(tmp_path) as api:
        stub = certificates_pb2_grpc.CertificatesStub(api.channel)
        request, _ = join_request("abcdef.0123456789abcdef")
        details = await refused(stub.Join(request, timeout=5), Code.FAILED_PRECONDITION)
        assert "--insecure" in details
