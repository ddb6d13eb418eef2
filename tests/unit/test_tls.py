"""TLS in rpc.Server and rpc.channel (common/tls.py, common/rpc.py) and identities
(common/identity.py): a server serves mutual TLS from a credential directory, the
handler sees the caller's identity, a renewed certificate is served to new
connections without a restart, the join port serves without client certificates,
and plaintext is refused beyond loopback. Everything listens on 127.0.0.1."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeling.common import identity, pki, rpc
from kubeling.common.tls import CredentialDir, Credentials

METHOD = "/kubeling.test.Identity/Who"


def _handler() -> grpc.GenericRpcHandler:
    async def who(request: bytes, context: Any) -> bytes:
        caller = identity.identity_of(context)
        return f"{caller.user}|{','.join(caller.groups)}|{caller.role}".encode()

    return grpc.method_handlers_generic_handler(
        "kubeling.test.Identity", {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.make_ca("tls-test-ca")


def _credentials(ca: pki.Issued, issued: pki.Issued) -> Credentials:
    return Credentials(ca.cert_pem, issued.cert_pem, issued.key_pem)


def _serving(ca: pki.Issued, days: int = 30) -> pki.Issued:
    return pki.serving_cert(ca, "test-server", ips=["127.0.0.1"], days=days)


@pytest.fixture
async def server(ca: pki.Issued, tmp_path: Path) -> AsyncIterator[tuple[rpc.Server, CredentialDir]]:
    directory = CredentialDir(tmp_path / "pki", "server")
    serving = _serving(ca)
    directory.save(Credentials(ca.cert_pem, serving.cert_pem + ca.cert_pem, serving.key_pem))
    server = rpc.Server(
        "127.0.0.1:0",
        [_handler()],
        [],
        tls=rpc.ServerTls(directory, without_client_cert="127.0.0.1:0"),
    )
    await server.start()
    try:
        yield server, directory
    finally:
        await server.stop(0)


async def _who(port: int, credentials: Credentials | None) -> str:
    async with rpc.channel(f"127.0.0.1:{port}", credentials=credentials) as channel:
        call = channel.unary_unary(METHOD)
        reply: bytes = await call(b"", timeout=10)
        return reply.decode()


async def test_the_handler_sees_the_identity_in_the_client_certificate(
    server: tuple[rpc.Server, CredentialDir], ca: pki.Issued
) -> None:
    srv, _ = server
    node = pki.issue(ca, "system:node:w1", ["system:nodes"])
    assert await _who(srv.port, _credentials(ca, node)) == "system:node:w1|system:nodes|node"
    admin = pki.issue(ca, "kubeling-admin", ["system:masters"])
    assert await _who(srv.port, _credentials(ca, admin)) == "kubeling-admin|system:masters|admin"


async def test_no_certificate_or_another_cas_is_refused_on_the_main_port(
    server: tuple[rpc.Server, CredentialDir], ca: pki.Issued
) -> None:
    srv, _ = server
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _who(srv.port, Credentials(ca.cert_pem, b"", b""))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    stranger_ca = pki.make_ca("stranger")
    stranger = pki.issue(stranger_ca, "kubeling-admin", ["system:masters"])
    # Trusting our CA but presenting a certificate of another: the handshake fails.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _who(srv.port, Credentials(ca.cert_pem, stranger.cert_pem, stranger.key_pem))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_join_port_serves_callers_without_a_certificate_as_anonymous(
    server: tuple[rpc.Server, CredentialDir], ca: pki.Issued
) -> None:
    srv, _ = server
    assert srv.join_port and srv.join_port != srv.port
    reply = await _who(srv.join_port, Credentials(ca.cert_pem, b"", b""))
    assert reply == "system:anonymous|system:unauthenticated|"


async def test_a_renewed_certificate_is_served_to_new_connections_without_restart(
    server: tuple[rpc.Server, CredentialDir], ca: pki.Issued
) -> None:
    srv, directory = server
    admin = _credentials(ca, pki.issue(ca, "kubeling-admin", ["system:masters"]))
    assert await _who(srv.port, admin)
    before = directory.load().cert_pem
    renewed = _serving(ca, days=7)
    directory.save(Credentials(ca.cert_pem, renewed.cert_pem + ca.cert_pem, renewed.key_pem))
    # A new channel makes a new connection: the server reads the new files for it.
    assert await _who(srv.port, admin)
    seen = pki.cert_info(renewed.cert_pem).not_after
    assert seen != pki.cert_info(before).not_after
    served = await _served_certificate(srv.port, ca)
    assert pki.cert_info(served).not_after == seen


async def _served_certificate(port: int, ca: pki.Issued) -> bytes:
    import asyncio
    import ssl

    def fetch() -> bytes:
        return ssl.get_server_certificate(("127.0.0.1", port)).encode()

    return await asyncio.to_thread(fetch)


def test_credential_files_are_private(ca: pki.Issued, tmp_path: Path) -> None:
    directory = CredentialDir(tmp_path / "pki", "kubelet")
    issued = pki.issue(ca, "system:node:w1", ["system:nodes"])
    directory.save(_credentials(ca, issued))
    for path in (directory.ca, directory.cert, directory.key):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert directory.load() == _credentials(ca, issued)


async def test_a_plaintext_server_is_refused_beyond_loopback() -> None:
    with pytest.raises(rpc.PlaintextRefused, match=r"0\.0\.0\.0:0"):
        rpc.Server("0.0.0.0:0", [_handler()], [])
    with pytest.raises(rpc.PlaintextRefused):
        rpc.Server("127.0.0.1:0,[::]:0", [_handler()], [])


async def test_a_plaintext_server_on_loopback_serves_anonymous_callers() -> None:
    server = rpc.Server("127.0.0.1:0,[::1]:0", [_handler()], [])
    await server.start()
    try:
        assert (await _who(server.port, None)).startswith("system:anonymous|")
    finally:
        await server.stop(0)


@pytest.mark.parametrize(
    ("user", "groups", "role", "node"),
    [
        ("system:node:w1", ("system:nodes",), identity.NODE, "w1"),
        ("system:kube-proxy:w1", ("system:node-proxiers",), identity.PROXY, "w1"),
        ("alice", ("kubeling:view",), identity.VIEW, ""),
        ("bob", ("kubeling:edit", "kubeling:view"), identity.EDIT, ""),
        ("kubeling:master", ("system:masters",), identity.ADMIN, ""),
        # A node name in the CN without the group is no node.
        ("system:node:w1", (), "", ""),
        ("mallory", ("system:nodes",), "", ""),
    ],
)
def test_roles_come_from_the_groups(
    user: str, groups: tuple[str, ...], role: str, node: str
) -> None:
    caller = identity.Identity(user, groups)
    assert (caller.role, caller.node_name) == (role, node)
