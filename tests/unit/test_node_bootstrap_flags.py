"""The joining and TLS flags of kubeling-kubelet and kubeling-proxy (shared in
client/bootstrap.py): defaults, --insecure kept to this machine, no token on argv."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from kubeling.client import bootstrap
from kubeling.kubelet import main as kubelet_main
from kubeling.proxy import main as proxy_main

ParseArgs = Callable[[list[str] | None], object]
PROGRAMS = [
    pytest.param(kubelet_main.parse_args, "kubelet", 10250, id="kubelet"),
    pytest.param(proxy_main.parse_args, "proxy", 10249, id="proxy"),
]


@pytest.mark.parametrize(("parse", "component", "port"), PROGRAMS)
def test_secure_defaults(parse: ParseArgs, component: str, port: int) -> None:
    args = parse(["--master", "10.0.0.5:6443"])
    assert args.insecure is False
    assert args.join_address == "10.0.0.5:6444"
    assert args.listen == f"0.0.0.0:{port}"
    assert args.ca_cert_hash == ""
    if os.geteuid() == 0:
        assert args.cert_dir == Path(f"/var/lib/kubeling/{component}/pki")
    pinned = parse([
        "--master", "[fd00::5]:6443", "--discovery-token-ca-cert-hash", "sha256:" + "ab" * 32,
    ])  # fmt: skip
    assert pinned.join_address == "[fd00::5]:6444"
    assert pinned.ca_cert_hash == "sha256:" + "ab" * 32
    given = parse(["--master", "10.0.0.5:6443", "--join-address", "10.0.0.9:7444"])
    assert given.join_address == "10.0.0.9:7444"


def test_the_cert_dir_of_a_user_is_under_xdg_data_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert bootstrap.default_cert_dir("kubelet") == tmp_path / "kubeling" / "kubelet" / "pki"
    assert bootstrap.default_cert_dir("proxy") == tmp_path / "kubeling" / "proxy" / "pki"


@pytest.mark.parametrize(("parse", "component", "port"), PROGRAMS)
def test_insecure_stays_on_this_machine(
    parse: ParseArgs, component: str, port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    local = parse(["--master", "127.0.0.1:6443", "--insecure"])
    assert local.listen == f"127.0.0.1:{port}"
    assert parse(["--master", "unix:/run/kubeling.sock", "--insecure"])
    with pytest.raises(SystemExit) as exited:
        parse(["--master", "10.0.0.5:6443", "--insecure"])
    assert exited.value.code == 2
    assert "only to a master on this machine" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--master", "127.0.0.1:6443", "--insecure", "--listen", f"0.0.0.0:{port}"])
    assert f"not 0.0.0.0:{port}" in capsys.readouterr().err


@pytest.mark.parametrize(("parse", "component", "port"), PROGRAMS)
def test_a_token_on_the_command_line_is_refused(
    parse: ParseArgs, component: str, port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(["--token", "abcdef.0123456789abcdef"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--token-file" in err and "ps" in err


def test_the_token_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(bootstrap.TOKEN_ENV, raising=False)
    path = tmp_path / "token"
    path.write_text("abcdef.0123456789abcdef\n")
    args = proxy_main.parse_args(["--token-file", str(path)])
    assert bootstrap.token_from(args, "kubeling-proxy") == "abcdef.0123456789abcdef"
    monkeypatch.setenv(bootstrap.TOKEN_ENV, "ghijkl.0123456789abcdef")
    assert bootstrap.token_from(proxy_main.parse_args([]), "x") == "ghijkl.0123456789abcdef"
    path.write_text("not a token")
    with pytest.raises(SystemExit, match="kubeling-proxy: --token-file"):
        bootstrap.token_from(args, "kubeling-proxy")


async def test_a_node_without_certificate_or_token_is_told_which_flags_to_give(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(bootstrap.TOKEN_ENV, raising=False)
    args = kubelet_main.parse_args(["--master", "127.0.0.1:1", "--cert-dir", str(tmp_path / "pki")])
    config = kubelet_main.config_from(args)
    assert config.credentials is not None
    assert config.credentials.directory == tmp_path / "pki"
    with pytest.raises(SystemExit) as exited:
        await bootstrap.connect(
            args, "kubeling-kubelet", config.credentials, "node", "n1", ["127.0.0.1"]
        )
    message = str(exited.value)
    assert message.startswith("kubeling-kubelet: no usable certificate in")
    assert "--token-file" in message and "--discovery-token-ca-cert-hash" in message
    insecure = kubelet_main.parse_args(["--master", "127.0.0.1:1", "--insecure"])
    assert kubelet_main.config_from(insecure).credentials is None


def test_the_kubelet_keeps_address_leases_where_told() -> None:
    base = ["--master", "127.0.0.1:1", "--insecure", "--cni-conf-dir", "/n/net.d"]
    assert kubelet_main.config_from(kubelet_main.parse_args(base)).cni_ipam_dir is None
    told = kubelet_main.parse_args([*base, "--cni-ipam-dir", "/n/ipam"])
    assert kubelet_main.config_from(told).cni_ipam_dir == Path("/n/ipam")
