"""A node's TLS bootstrap (client/bootstrap.py) against a small in-test master: a
Certificates service on a join port (TLS, no client certificate, chain [server
cert, CA]) and a main port (client certificates required) that signs CSRs with a
short validity. Everything listens on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from kubeling.client import Client, bootstrap
from kubeling.common import identity, pki, rpc
from kubeling.common.tls import CredentialDir, Credentials
from kubeling.v1 import certificates_pb2, core_pb2, meta_pb2

TOKEN = "abcdef.0123456789abcdef"


@dataclass
class FakeMaster:
    """Records every call; signs for `validity` seconds."""

    ca: pki.Issued
    validity: float = 3600.0
    joins: list[certificates_pb2.JoinRequest] = field(default_factory=list)
    renewals: list[str] = field(default_factory=list)  # the callers' users
    server: rpc.Server | None = None

    @property
    def pin(self) -> str:
        return pki.ca_pin(self.ca.cert_pem)

    @property
    def main(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.port}"

    @property
    def join_address(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.join_port}"

    def _sign(self, csr: bytes, who: identity.Identity, addresses: list[str]) -> bytes:
        days = cast(int, self.validity / 86400)  # timedelta takes a fraction of a day
        return pki.sign_csr(
            self.ca, csr, who.user, who.groups, days,
            server=who.role == identity.NODE, client=True, ips=addresses,
        )  # fmt: skip

    def _reply(self, cert: bytes) -> certificates_pb2.CertificateResponse:
        return certificates_pb2.CertificateResponse(certificate=cert, ca=self.ca.cert_pem)

    async def join(self, request: certificates_pb2.JoinRequest, context: Any) -> Any:
        self.joins.append(request)
        if request.token != TOKEN:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown bootstrap token")
        who = bootstrap.Subject(request.role, request.node_name).identity
        return self._reply(self._sign(request.csr, who, list(request.addresses)))

    async def renew(self, request: certificates_pb2.RenewRequest, context: Any) -> Any:
        caller = identity.identity_of(context)
        self.renewals.append(caller.user)
        if not caller.authenticated:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        return self._reply(self._sign(request.csr, caller, list(request.addresses)))

    async def get_node(self, request: meta_pb2.GetRequest, context: Any) -> core_pb2.Node:
        node = core_pb2.Node()
        node.metadata.name = identity.identity_of(context).user
        return node

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def unary(fn: Any, request: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=request.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )

        return [
            grpc.method_handlers_generic_handler(
                "kubeling.v1.Certificates",
                {
                    "Join": unary(self.join, certificates_pb2.JoinRequest),
                    "Renew": unary(self.renew, certificates_pb2.RenewRequest),
                },
            ),
            grpc.method_handlers_generic_handler(
                "kubeling.v1.Nodes", {"Get": unary(self.get_node, meta_pb2.GetRequest)}
            ),
        ]


@pytest.fixture
async def master(tmp_path: Path) -> AsyncIterator[FakeMaster]:
    ca = pki.make_ca("bootstrap-test-ca")
    fake = FakeMaster(ca)
    serving = pki.serving_cert(ca, "kubeling-master", ips=["127.0.0.1"])
    directory = CredentialDir(tmp_path / "master-pki", "master")
    directory.save(Credentials(ca.cert_pem, serving.cert_pem + ca.cert_pem, serving.key_pem))
    fake.server = rpc.Server(
        "127.0.0.1:0",
        fake.handlers(),
        [],
        tls=rpc.ServerTls(directory, without_client_cert="127.0.0.1:0"),
    )
    await fake.server.start()
    try:
        yield fake
    finally:
        await fake.server.stop(0)


async def test_a_wrong_pin_is_refused_before_anything_is_sent(
    master: FakeMaster, tmp_path: Path
) -> None:
    stranger = pki.ca_pin(pki.make_ca("stranger").cert_pem)
    with pytest.raises(bootstrap.BootstrapError) as refused:
        await asyncio.to_thread(bootstrap.fetch_ca, master.join_address, stranger)
    message = str(refused.value)
    assert f"the master's CA {master.pin}" in message
    assert f"does not match --discovery-token-ca-cert-hash {stranger}" in message
    assert "refusing to send the token" in message
    # load_or_join stops at the same point: the token never reaches the master.
    with pytest.raises(bootstrap.BootstrapError, match="refusing to send the token"):
        await bootstrap.load_or_join(
            CredentialDir(tmp_path / "pki", "kubelet"),
            role="node", node_name="w1", join_address=master.join_address,
            pin=stranger, token=TOKEN,
        )  # fmt: skip
    assert master.joins == []
    assert not (tmp_path / "pki").exists()


async def test_the_right_pin_gives_the_ca_from_the_chain(master: FakeMaster) -> None:
    ca = await asyncio.to_thread(bootstrap.fetch_ca, master.join_address, master.pin.upper())
    assert ca == master.ca.cert_pem
    with pytest.raises(bootstrap.BootstrapError, match="sha256:<64 hex digits>"):
        bootstrap.fetch_ca(master.join_address, "md5:1234")


async def test_join_stores_private_credentials_with_the_node_identity(
    master: FakeMaster, tmp_path: Path
) -> None:
    cred_dir = CredentialDir(tmp_path / "pki", "kubelet")
    credentials = await bootstrap.load_or_join(
        cred_dir, role="node", node_name="w1", join_address=master.join_address,
        pin=master.pin, token=TOKEN, addresses=["127.0.0.1"],
    )  # fmt: skip
    (sent,) = master.joins
    assert (sent.token, sent.role, sent.node_name, list(sent.addresses)) == (
        TOKEN, "node", "w1", ["127.0.0.1"],
    )  # fmt: skip
    info = pki.cert_info(credentials.cert_pem)
    assert (info.common_name, info.organizations) == ("system:node:w1", ("system:nodes",))
    assert info.ips == ("127.0.0.1",)
    assert cred_dir.load() == credentials
    for path in (cred_dir.ca, cred_dir.cert, cred_dir.key):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    # A restart uses what is stored: no second join, no token needed.
    again = await bootstrap.load_or_join(
        cred_dir, role="node", node_name="w1", join_address="", pin="", token=""
    )
    assert again == credentials and len(master.joins) == 1


async def test_a_proxy_joins_with_its_own_identity(master: FakeMaster, tmp_path: Path) -> None:
    cred_dir = CredentialDir(tmp_path / "pki", "proxy")
    credentials = await bootstrap.load_or_join(
        cred_dir, role="proxy", node_name="w1", join_address=master.join_address,
        pin=master.pin, token=TOKEN,
    )  # fmt: skip
    info = pki.cert_info(credentials.cert_pem)
    assert (info.common_name, info.organizations) == (
        "system:kube-proxy:w1", ("system:node-proxiers",),
    )  # fmt: skip


async def test_joining_without_token_or_pin_names_the_flags(tmp_path: Path) -> None:
    cred_dir = CredentialDir(tmp_path / "pki", "kubelet")
    with pytest.raises(bootstrap.BootstrapError) as missing:
        await bootstrap.load_or_join(
            cred_dir, role="node", node_name="w1", join_address="127.0.0.1:1", pin="", token=""
        )
    assert "--token-file" in str(missing.value)
    assert "--discovery-token-ca-cert-hash" in str(missing.value)


async def test_a_refused_token_is_reported_with_the_masters_reason(
    master: FakeMaster, tmp_path: Path
) -> None:
    with pytest.raises(bootstrap.BootstrapError, match="UNAUTHENTICATED: unknown bootstrap token"):
        await bootstrap.load_or_join(
            CredentialDir(tmp_path / "pki", "kubelet"),
            role="node", node_name="w1", join_address=master.join_address,
            pin=master.pin, token="zzzzzz.0123456789abcdef",
        )  # fmt: skip
    assert not (tmp_path / "pki").exists()


async def test_an_expired_or_foreign_stored_certificate_means_joining_again(
    master: FakeMaster, tmp_path: Path
) -> None:
    cred_dir = CredentialDir(tmp_path / "pki", "kubelet")
    other = pki.issue(master.ca, "system:node:other", ["system:nodes"])
    cred_dir.save(Credentials(master.ca.cert_pem, other.cert_pem, other.key_pem))
    credentials = await bootstrap.load_or_join(
        cred_dir, role="node", node_name="w1", join_address=master.join_address,
        pin=master.pin, token=TOKEN,
    )  # fmt: skip
    assert pki.cert_info(credentials.cert_pem).common_name == "system:node:w1"
    assert len(master.joins) == 1


def test_renewal_is_due_at_80_percent_of_the_lifetime_since_the_certificate_arrived(
    tmp_path: Path,
) -> None:
    ca = pki.make_ca("lifetime")
    cred_dir = CredentialDir(tmp_path / "pki", "kubelet")
    # pki backdates notBefore 5 minutes: that part of the lifetime does not count.
    issued = pki.issue(ca, "system:node:w1", ["system:nodes"], days=cast(int, 100 / 86400))
    cred_dir.save(Credentials(ca.cert_pem, issued.cert_pem, issued.key_pem))
    renewer = bootstrap.CertificateRenewer("127.0.0.1:1", cred_dir, "node", "w1")
    assert 75 < renewer.due_in() <= 80


async def _served_certificate(port: int) -> bytes:
    def fetch() -> bytes:
        return ssl.get_server_certificate(("127.0.0.1", port)).encode()

    return await asyncio.to_thread(fetch)


def _serial(cert_pem: bytes) -> int:
    from cryptography import x509

    return int(x509.load_pem_x509_certificate(cert_pem).serial_number)


async def test_renewal_replaces_the_certificate_before_expiry_without_restarts(
    master: FakeMaster, tmp_path: Path
) -> None:
    master.validity = 4.0
    cred_dir = CredentialDir(tmp_path / "pki", "kubelet")
    first = await bootstrap.load_or_join(
        cred_dir, role="node", node_name="w1", join_address=master.join_address,
        pin=master.pin, token=TOKEN, addresses=["127.0.0.1"],
    )  # fmt: skip
    first_expiry = pki.cert_info(first.cert_pem).not_after.timestamp()
    # The node's own server (as the kubelet API) serves from the directory.
    node_server = rpc.Server("127.0.0.1:0", [], [], tls=rpc.ServerTls(cred_dir))
    await node_server.start()
    api = Client(master.main, credentials=first)
    renewed_seen: list[Credentials] = []

    async def switch(new: Credentials) -> None:
        renewed_seen.append(new)
        await api.use_credentials(new, grace=0.5)

    renewer = bootstrap.CertificateRenewer(
        master.main, cred_dir, "node", "w1", ["127.0.0.1"], on_renewed=switch
    )
    task = asyncio.create_task(renewer.run())
    try:
        assert (await api.nodes.get("w1")).metadata.name == "system:node:w1"
        while not renewed_seen:
            assert time.time() < first_expiry, "not renewed before the certificate expired"
            await asyncio.sleep(0.05)
        assert time.time() < first_expiry
        assert master.renewals == ["system:node:w1"]
        renewed = cred_dir.load()
        assert renewed.key_pem != first.key_pem  # a new key with every certificate
        info = pki.cert_info(renewed.cert_pem)
        assert (info.common_name, info.organizations) == ("system:node:w1", ("system:nodes",))
        # A new connection to the node's server gets the renewed certificate.
        served = await _served_certificate(node_server.port)
        assert _serial(served) != _serial(first.cert_pem)
        assert _serial(served) in {_serial(c.cert_pem) for c in [*renewed_seen, cred_dir.load()]}
        # Past the first certificate's expiry the switched client still works...
        await asyncio.sleep(max(0.0, first_expiry - time.time()) + 1.0)
        assert (await api.nodes.get("w1")).metadata.name == "system:node:w1"
        # ...where a client still holding it is turned away.
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            async with Client(master.main, credentials=first) as stale:
                await stale.nodes.get("w1")
        assert expired.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await api.close()
        await node_server.stop(0)


async def test_a_failed_renewal_is_retried(
    master: FakeMaster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cred_dir = CredentialDir(tmp_path / "pki", "kubelet")
    await bootstrap.load_or_join(
        cred_dir, role="node", node_name="w1", join_address=master.join_address,
        pin=master.pin, token=TOKEN,
    )  # fmt: skip
    calls = []
    real = bootstrap.renew

    async def flaky(*args: Any, **kwargs: Any) -> Credentials:
        calls.append(1)
        if len(calls) == 1:
            raise bootstrap.BootstrapError("the master is restarting")
        return await real(*args, **kwargs)

    monkeypatch.setattr(bootstrap, "renew", flaky)
    monkeypatch.setattr(bootstrap, "_MAX_RETRY_WAIT", 0.1)
    renewer = bootstrap.CertificateRenewer(master.main, cred_dir, "node", "w1")
    renewed = await asyncio.wait_for(renewer.renew_now(), 10)
    assert len(calls) == 2 and renewer.renewals == 1
    assert cred_dir.load() == renewed


def test_the_peer_chain_is_read_as_pem_from_der_too() -> None:
    """Python 3.13's public SSLSocket.get_unverified_chain gives DER bytes."""
    ca = pki.make_ca("der")

    class Public:
        def get_unverified_chain(self) -> list[bytes]:
            return [ssl.PEM_cert_to_DER_cert(ca.cert_pem.decode())]

    (pem,) = bootstrap._peer_chain(cast(ssl.SSLSocket, Public()))
    assert pki.ca_pin(pem) == pki.ca_pin(ca.cert_pem)
