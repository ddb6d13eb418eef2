"""Bootstrap tokens (common/token.py, master/tokens.py): kubeadm's shape, expiry,
deletion, secrets kept only as keyed hashes in 0600 files, the Tokens service only
for local callers on a master without TLS (with TLS: admins, tests/unit/test_authz.py),
and no token on any command line (kubelet, lab, join command)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeling.api.errors import ApiError
from kubeling.common import pki
from kubeling.common.token import TOKEN_RE, TokenRefused, TokenStore, generate, split
from kubeling.kubelet import main as kubelet_main
from kubeling.lab.lab import Lab, LabState, NodeState, Proc
from kubeling.master import main as master_main
from kubeling.master.tokens import TokensService, local_peer
from kubeling.v1 import tokens_pb2


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


def test_valid_expired_deleted_and_unknown_tokens(tmp_path: Path) -> None:
    clock = Clock()
    store = TokenStore(tmp_path, clock)
    token, stored = store.create(ttl=3600, description="worker-1")
    forever, _ = store.create(ttl=0)
    assert store.check(token) == stored.id
    assert stored.expires == clock.now + 3600

    clock.now += 3599
    assert store.check(token) == stored.id
    clock.now += 1
    with pytest.raises(TokenRefused, match=f"bootstrap token {stored.id} expired at "):
        store.check(token)
    clock.now += 10 * 365 * 24 * 3600
    store.check(forever)  # ttl 0: never expires

    assert store.delete(split(forever)[0])
    assert not store.delete(split(forever)[0])
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


def test_secrets_are_kept_only_as_keyed_hashes_in_0600_files(tmp_path: Path) -> None:
    store = TokenStore(tmp_path)
    tokens = [store.create(description=f"t{i}")[0] for i in range(3)]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["bootstrap-tokens.json", "bootstrap-tokens.key"]
    for path in tmp_path.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path
        text = path.read_text()
        for token in tokens:
            assert split(token)[1] not in text
    import hashlib

    # Not a plain hash either: without the key file, the list reveals nothing.
    plain = hashlib.sha256(split(tokens[0])[1].encode()).hexdigest()
    assert plain not in (tmp_path / "bootstrap-tokens.json").read_text()

    # A restarted master (a new store on the same directory) knows them all.
    again = TokenStore(tmp_path)
    assert [t.description for t in again.list()] == ["t0", "t1", "t2"]
    for token in tokens:
        again.check(token)


def test_a_damaged_tokens_file_is_reported_clearly(tmp_path: Path) -> None:
    TokenStore(tmp_path).create()
    (tmp_path / "bootstrap-tokens.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read the bootstrap tokens in .* move"):
        TokenStore(tmp_path)


def test_long_expired_tokens_are_dropped_on_the_next_write(tmp_path: Path) -> None:
    clock = Clock()
    store = TokenStore(tmp_path, clock)
    old, _ = store.create(ttl=60)
    clock.now += 60 + 8 * 24 * 3600
    store.create()
    assert split(old)[0] not in {t.id for t in store.list()}


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


async def test_the_tokens_service_refuses_remote_callers(tmp_path: Path) -> None:
    service = TokensService(TokenStore(tmp_path))
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


async def test_the_tokens_service_rejects_bad_input(tmp_path: Path) -> None:
    service = TokensService(TokenStore(tmp_path))
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


async def test_local_callers_over_ipv4_and_ipv6_loopback_are_served(tmp_path: Path) -> None:
    """Through real gRPC: peers as grpcio writes them (IPv6 percent-encoded)."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((TokensService(TokenStore(tmp_path)).handler(),))
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
