"""Bootstrap tokens (common/token.py, master/tokens.py): kubeadm's shape, expiry,
deletion, secrets kept only as hashes in records of the store every master shares
(old token files imported once), the Tokens service only
for local callers on a master without TLS (with TLS: admins, tests/unit/test_authz.py),
and no token on any command line (kubelet, lab, join command)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeling.api.errors import ApiError
from kubeling.common import identity, pki
from kubeling.common.token import TOKEN_RE, TokenRefused, TokenStore, generate, split
from kubeling.kubelet import main as kubelet_main
from kubeling.lab.lab import Lab, LabState, NodeState, Proc
from kubeling.master import cluster_ca
from kubeling.master import main as master_main
from kubeling.master.certificates import CertificatesService
from kubeling.master.codec import ProtoCodec
from kubeling.master.store.base import Store
from kubeling.master.store.sqlite import SqliteStore
from kubeling.master.tokens import StoreTokenRecords, TokensService, local_peer
from kubeling.v1 import certificates_pb2, tokens_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_tokens_have_kubeadms_shape_and_differ() -> None:
    made = {generate() for _ in range(200)}
    assert len(made) == 200
    assert all(TOKEN_RE.match(t) for t in made)
    assert split("abcdef.0123456789abcdef") == ("abcdef", "0123456789abcdef")
    bad_tokens = [
        "", "abcdef", "ABCDEF.0123456789abcdef", "abcde.0123456789abcdef",
        "abcdef.0123456789abcde", "abcdef:0123456789abcdef", " abcdef.0123456789abcdef",
    ]  # fmt: skip
    for bad in bad_tokens:
        with pytest.raises(ValueError):
            split(bad)


@pytest.fixture
async def shared(tmp_path: Path) -> AsyncIterator[Store]:
    """One store, as every master of a cluster shares one."""
    store = SqliteStore(tmp_path / "state.db", ProtoCodec(), history=1000)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def tokens_of(store: Store, clock: Clock | None = None, data_dir: Path | None = None) -> TokenStore:
    """One master's TokenStore over the shared store."""
    return TokenStore(StoreTokenRecords(store), data_dir, clock or time.time)


async def test_valid_expired_deleted_and_unknown_tokens(shared: Store) -> None:
    clock = Clock()
    store = tokens_of(shared, clock)
    token, stored = await store.issue(ttl=3600, description="worker-1")
    forever, _ = await store.issue(ttl=0)
    assert store.check(token) == stored.id
    assert stored.expires == clock.now + 3600

    clock.now += 3599
    assert store.check(token) == stored.id
    clock.now += 1
    with pytest.raises(TokenRefused, match=f"bootstrap token {stored.id} expired at "):
        store.check(token)
    clock.now += 10 * 365 * 24 * 3600
    store.check(forever)  # ttl 0: never expires

    assert await store.remove(split(forever)[0])
    assert not await store.remove(split(forever)[0])
    with pytest.raises(TokenRefused, match="unknown bootstrap token"):
        store.check(forever)
    with pytest.raises(TokenRefused, match="unknown bootstrap token zzzzzz"):
        store.check("zzzzzz.0123456789abcdef")
    # A known ID with the wrong secret answers as unknown: the ID is not a secret.
    with pytest.raises(TokenRefused, match="unknown bootstrap token"):
        store.check(f"{stored.id}.0123456789abcdef")
    with pytest.raises(TokenRefused, match="malformed"):
        store.check("wrong.token")
    with pytest.raises(TokenRefused, match="--token-file"):
        store.check("")


async def test_tokens_are_shared_by_every_master_and_kept_only_as_hashes(
    shared: Store, tmp_path: Path
) -> None:
    data_dir = tmp_path / "master-a"
    one, other = tokens_of(shared, data_dir=data_dir), tokens_of(shared)
    tokens = [(await one.issue(description=f"t{i}"))[0] for i in range(3)]
    # Another master knows them all, and a deletion on it holds for the first.
    assert [t.description for t in other.list()] == ["t0", "t1", "t2"]
    for token in tokens:
        assert other.check(token) == split(token)[0]
    assert await other.remove(split(tokens[0])[0])
    with pytest.raises(TokenRefused, match="unknown"):
        one.check(tokens[0])
    # No token files any more; in the store only a hash of each secret.
    assert not data_dir.exists()
    for record in StoreTokenRecords(shared).all():
        assert len(record.hash) == 64 and not record.hmac_key
    on_disk = _store_files(tmp_path)
    assert on_disk and all(split(t)[1].encode() not in on_disk for t in tokens)
    # Internal records: no API kind's prefix covers them.
    entries, _ = shared.list_prefix("/")
    assert {e.key.split("/")[1] for e in entries} == {"bootstraptokens"}


def _store_files(directory: Path) -> bytes:
    """What the SQLite store keeps on disk (database and write-ahead log)."""
    return b"".join(p.read_bytes() for p in directory.glob("state.db*"))


async def test_the_store_survives_a_restart(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db", ProtoCodec(), history=1000)
    await store.open()
    token, _ = await tokens_of(store).issue(description="kept")
    await store.close()
    store = SqliteStore(tmp_path / "state.db", ProtoCodec(), history=1000)
    await store.open()
    try:
        again = tokens_of(store)
        assert [t.description for t in again.list()] == ["kept"]
        again.check(token)
    finally:
        await store.close()


def _old_master_files(data_dir: Path, clock: Clock) -> str:
    """bootstrap-tokens.json/.key as a master before the store kept them wrote them."""
    key = secrets.token_bytes(32)
    token = generate()
    token_id, secret = split(token)
    entry = {
        "id": token_id,
        "hash": hmac.new(key, secret.encode(), hashlib.sha256).hexdigest(),
        "description": "from before",
        "created": clock.now,
        "expires": 0,
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "bootstrap-tokens.json").write_text(json.dumps([entry]))
    (data_dir / "bootstrap-tokens.key").write_text(key.hex() + "\n")
    return token


async def test_an_upgraded_master_imports_its_token_files_once(
    shared: Store, tmp_path: Path
) -> None:
    clock = Clock()
    data_dir = tmp_path / "old-master"
    token = _old_master_files(data_dir, clock)
    upgraded = tokens_of(shared, clock, data_dir)
    # Accepted and listed at once, before the import.
    assert upgraded.check(token) == split(token)[0]
    assert [t.description for t in upgraded.list()] == ["from before"]
    assert upgraded.exists
    assert await upgraded.import_legacy() == 1
    assert sorted(p.name for p in data_dir.iterdir()) == [
        "bootstrap-tokens.json.imported",
        "bootstrap-tokens.key.imported",
    ]
    # Now every master accepts it (its old keyed hash, checked with the old key).
    other = tokens_of(shared, clock)
    assert other.check(token) == split(token)[0]
    with pytest.raises(TokenRefused, match="unknown"):
        other.check(f"{split(token)[0]}.0123456789abcdef")
    # Deleted, it stays deleted across the next start of the upgraded master.
    assert await other.remove(split(token)[0])
    restarted = tokens_of(shared, clock, data_dir)
    assert await restarted.import_legacy() == 0
    with pytest.raises(TokenRefused, match="unknown"):
        restarted.check(token)
    assert restarted.exists  # a cluster that had tokens prints no first token


async def test_a_damaged_old_tokens_file_is_reported_clearly(shared: Store, tmp_path: Path) -> None:
    _old_master_files(tmp_path, Clock())
    (tmp_path / "bootstrap-tokens.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read the bootstrap tokens in .* move"):
        tokens_of(shared, data_dir=tmp_path)


async def test_long_expired_tokens_are_dropped_on_the_next_write(shared: Store) -> None:
    clock = Clock()
    store = tokens_of(shared, clock)
    old, _ = await store.issue(ttl=60)
    clock.now += 60 + 8 * 24 * 3600
    await store.issue()
    assert split(old)[0] not in {t.id for t in store.list()}
    assert split(old)[0] not in {r.metadata.name for r in StoreTokenRecords(shared).all()}


async def test_a_cluster_has_tokens_once_one_is_issued(shared: Store) -> None:
    """`exists` decides whether a master prints a first token: false in a new
    cluster, true on every master as soon as one master has issued a token."""
    one, other = tokens_of(shared), tokens_of(shared)
    assert not one.exists and not other.exists
    token, stored = await one.issue(description="first start")
    assert one.exists and other.exists
    assert other.check(token) == stored.id


async def test_a_token_made_on_one_master_joins_on_another(shared: Store, tmp_path: Path) -> None:
    """Tokens/Create answered by master A; Certificates/Join answered by master B."""
    a, b = tokens_of(shared), tokens_of(shared)
    made = await TokensService(a).create(tokens_pb2.CreateTokenRequest(), Peer("unix:/x"))
    ca = cluster_ca.load_or_create(tmp_path / "b", ["127.0.0.1:0"])
    joins = CertificatesService(ca, b, loopback_only=True)
    request = certificates_pb2.JoinRequest(
        token=made.token,
        role="node",
        node_name="w1",
        csr=pki.make_csr(pki.make_key(), identity.NODE_PREFIX + "w1", (identity.GROUP_NODES,)),
        addresses=["127.0.0.1"],
    )
    reply = await joins.join(request, Peer("ipv4:10.0.0.5:1"))
    assert pki.cert_info(reply.certificate).common_name == "system:node:w1"
    # Deleted through A: B refuses it.
    await TokensService(a).delete(tokens_pb2.DeleteTokenRequest(id=made.info.id), Peer("unix:/x"))
    with pytest.raises(ApiError) as refused:
        await joins.join(request, Peer("ipv4:10.0.0.5:1"))
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "unknown bootstrap token" in refused.value.message


def test_local_peers() -> None:
    assert local_peer("unix:/run/kubeling/master.sock")
    assert local_peer("unix:")
    assert local_peer("ipv4:127.0.0.1:40000")
    assert local_peer("ipv4:127.8.9.10:40000")
    assert local_peer("ipv6:[::1]:40000")
    assert local_peer("ipv6:%5B::1%5D:40000")  # as grpcio 1.85 writes it
    assert not local_peer("ipv6:%5B2001:db8::1%5D:40000")
    assert local_peer("ipv6:[::ffff:127.0.0.1]:40000")
    assert not local_peer("ipv4:10.0.0.5:40000")
    assert not local_peer("ipv6:[2001:db8::1]:40000")
    assert not local_peer("ipv6:[::ffff:10.0.0.5]:40000")
    assert not local_peer("ipv4:localhost:1")
    assert not local_peer("")


class Peer:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


async def test_the_tokens_service_refuses_remote_callers(shared: Store) -> None:
    service = TokensService(tokens_of(shared))
    request = tokens_pb2.CreateTokenRequest()
    with pytest.raises(ApiError) as refused:
        await service.create(request, Peer("ipv4:10.0.0.5:5000"))
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "10.0.0.5" in refused.value.message
    with pytest.raises(ApiError) as refused:
        await service.list(tokens_pb2.ListTokensRequest(), Peer("ipv6:[2001:db8::1]:1"))
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert service.store is not None and service.store.list() == []

    made = await service.create(request, Peer("ipv4:127.0.0.1:5000"))
    assert TOKEN_RE.match(made.token)
    # Unset ttl: 24 h.
    assert made.info.expires.seconds - made.info.created.seconds == 24 * 3600
    with pytest.raises(ApiError) as refused:
        await service.delete(
            tokens_pb2.DeleteTokenRequest(id=made.info.id), Peer("ipv4:10.0.0.5:1")
        )
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    listed = await service.list(tokens_pb2.ListTokensRequest(), Peer("unix:/x"))
    assert [t.id for t in listed.tokens] == [made.info.id]


async def test_the_tokens_service_rejects_bad_input(shared: Store) -> None:
    service = TokensService(tokens_of(shared))
    local = Peer("unix:/x")
    bad: list[Any] = [
        (service.create, tokens_pb2.CreateTokenRequest(description="x" * 300)),
        (service.create, tokens_pb2.CreateTokenRequest(description="a\nb")),
        (service.delete, tokens_pb2.DeleteTokenRequest(id="../../etc")),
        (service.delete, tokens_pb2.DeleteTokenRequest(id="")),
    ]
    for seconds in (-1, 11 * 365 * 24 * 3600, 315_576_000_000):
        out_of_range = tokens_pb2.CreateTokenRequest()
        out_of_range.ttl.seconds = seconds
        bad.append((service.create, out_of_range))
    for method, request in bad:
        with pytest.raises(ApiError) as refused:
            await method(request, local)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT, request
    with pytest.raises(ApiError) as refused:
        await service.delete(tokens_pb2.DeleteTokenRequest(id="abcdef"), local)
    assert refused.value.code == grpc.StatusCode.NOT_FOUND
    # A master that does not require tokens says so instead of making useless ones.
    with pytest.raises(ApiError) as refused:
        await TokensService(None).create(tokens_pb2.CreateTokenRequest(), local)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "--bootstrap-tokens" in refused.value.message


def test_the_kubelet_refuses_a_token_on_its_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        kubelet_main.parse_args(["--token", "abcdef.0123456789abcdef"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--token-file" in err and "ps" in err


def test_the_kubelet_reads_its_token_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "token"
    path.write_text("abcdef.0123456789abcdef\n")
    assert kubelet_main.join_token(kubelet_main.parse_args(["--token-file", str(path)])) == (
        "abcdef.0123456789abcdef"
    )
    monkeypatch.setenv("KUBELING_TOKEN", "ghijkl.0123456789abcdef")
    assert kubelet_main.join_token(kubelet_main.parse_args([])) == "ghijkl.0123456789abcdef"
    path.write_text("not a token")
    with pytest.raises(SystemExit, match="looks like"):
        kubelet_main.join_token(kubelet_main.parse_args(["--token-file", str(path)]))
    with pytest.raises(SystemExit, match="No such file"):
        kubelet_main.join_token(kubelet_main.parse_args(["--token-file", str(tmp_path / "no")]))


def test_the_master_refuses_the_old_token_file_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        master_main.parse_args(["--join-token-file", "/tmp/x"])
    assert "kubeling token create" in capsys.readouterr().err
    assert master_main.parse_args(["--bootstrap-tokens"]).bootstrap_tokens


def test_the_join_command_puts_the_token_in_a_file_not_on_argv() -> None:
    text = master_main.join_command("10.0.0.5:6443", "", "abcdef.0123456789abcdef")
    kubelet_line = next(line for line in text.splitlines() if "kubeling-kubelet" in line)
    assert "abcdef.0123456789abcdef" not in kubelet_line
    assert (
        "--master 10.0.0.5:6443 --join-address 10.0.0.5:6444 --token-file /etc/kubeling/join-token"
        in kubelet_line
    )
    assert "umask 077" in text and "echo abcdef.0123456789abcdef >" in text
    assert "--master master.example:6443 " in master_main.join_command(
        "0.0.0.0:6443,unix:/x", "master.example", "t"
    )
    pinned = master_main.join_command(
        "unix:/x,10.0.0.5:6443", "", "t", "0.0.0.0:7444", "sha256:" + "ab" * 32
    )
    assert (
        "kubeling-kubelet --master 10.0.0.5:6443 --join-address 10.0.0.5:7444 "
        f"--token-file /etc/kubeling/join-token --discovery-token-ca-cert-hash sha256:{'ab' * 32}"
    ) in pinned


def test_the_labs_kubelet_command_line_has_no_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = Lab(tmp_path)
    node = NodeState("worker-1", "kl-worker-1", "10.99.0.11", "kl-w1", "")
    lab.state = LabState(prefix="kl-", master_netns="kl-net", nodes=[node])
    token = "abcdef.0123456789abcdef"
    token_file = lab.token_file("worker-1")
    token_file.parent.mkdir(parents=True)
    token_file.write_text(token + "\n")
    # The master's CA, whose pin the kubelet is given.
    lab.pki_dir.mkdir(parents=True)
    (lab.pki_dir / "ca.crt").write_bytes(pki.make_ca().cert_pem)
    spawned: list[list[str]] = []

    def spawn(netns: str, log_name: str, command: list[str], marker: str) -> Proc:
        spawned.append(command)
        return Proc(1, marker)

    monkeypatch.setattr(lab, "_spawn", spawn)
    lab._start_kubelet(node, tmp_path / "nodes" / "worker-1")
    (command,) = spawned
    assert not any("0123456789abcdef" in arg for arg in command)
    assert command[command.index("--token-file") + 1] == str(token_file)
    assert "--token" not in command
    assert command[command.index("--discovery-token-ca-cert-hash") + 1] == lab.ca_pin()


async def test_local_callers_over_ipv4_and_ipv6_loopback_are_served(shared: Store) -> None:
    """Through real gRPC: peers as grpcio writes them (IPv6 percent-encoded)."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((TokensService(tokens_of(shared)).handler(),))
    port = server.add_insecure_port("[::]:0")
    await server.start()
    try:
        for host in ("127.0.0.1", "[::1]"):
            async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
                call = channel.unary_unary(
                    "/kubeling.v1.Tokens/List",
                    request_serializer=tokens_pb2.ListTokensRequest.SerializeToString,
                    response_deserializer=tokens_pb2.ListTokensResponse.FromString,
                )
                reply = await call(tokens_pb2.ListTokensRequest(), timeout=10)
                assert list(reply.tokens) == []
    finally:
        await server.stop(0)
