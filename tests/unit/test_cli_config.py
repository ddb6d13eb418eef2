"""The CLI's server and credentials (cli/config.py), and its one-line errors for
failures that are about TLS and identity (cli/errors.py), without a master."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
import yaml

from kubeling.cli import config
from kubeling.cli.errors import CliError, server_error
from kubeling.client.config import CONFIG_ENV, ClientConfig
from kubeling.common import pki
from kubeling.common.tls import Credentials

CREDS = Credentials(b"CA\n", b"CERT\n", b"KEY\n")


@pytest.fixture(autouse=True)
def _no_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)


def test_credentials_and_server_come_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "alice.conf"
    ClientConfig("10.0.0.1:6443", CREDS).save(path)
    target = config.resolve(None, path)
    assert (target.server, target.credentials, target.config) == ("10.0.0.1:6443", CREDS, path)
    assert str(path) in target.source


def test_server_flag_and_env_keep_the_configs_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "alice.conf"
    ClientConfig("10.0.0.1:6443", CREDS).save(path)
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert config.resolve().server == "10.0.0.1:6443"
    monkeypatch.setenv(config.SERVER_ENV, "env-host")
    assert config.resolve().server == "env-host:6443"
    target = config.resolve("flag-host:7")
    assert (target.server, target.credentials) == ("flag-host:7", CREDS)


def test_the_order_of_config_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ~/.kubeling/config (HOME is tmp_path), then $KUBELING_CONFIG, then --config.
    ClientConfig("home:1", CREDS).save(tmp_path / ".kubeling" / "config")
    ClientConfig("env:2", CREDS).save(tmp_path / "env.conf")
    ClientConfig("flag:3", CREDS).save(tmp_path / "flag.conf")
    assert config.resolve().server == "home:1"
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "env.conf"))
    assert config.resolve().server == "env:2"
    assert config.resolve(None, tmp_path / "flag.conf").server == "flag:3"


def test_no_config_is_plaintext_to_localhost() -> None:
    target = config.resolve()
    assert (target.server, target.credentials, target.config) == ("localhost:6443", None, None)
    assert "no credentials" in target.source


def test_a_broken_config_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text("server: m:1\ncertificate-authority-data: x\n")
    with pytest.raises(CliError, match=f"error: {path}: TLS needs all three"):
        config.resolve(None, path)
    with pytest.raises(CliError, match="cannot read"):
        config.resolve(None, tmp_path / "missing.conf")


def test_a_unix_socket_is_checked_as_localhost(tmp_path: Path) -> None:
    # gRPC would check the master's certificate against the socket's path.
    path = tmp_path / "c.conf"
    ClientConfig("unix:/run/m.sock", CREDS).save(path)
    target = config.resolve(None, path)
    assert target.credentials is not None
    assert target.credentials.server_name == "localhost"
    assert config.resolve("10.0.0.1:6443", path).credentials == CREDS


def test_saved_lab_config_points_at_files_and_is_private(tmp_path: Path) -> None:
    ca = pki.make_ca()
    admin = pki.issue(ca, "kubeling-admin", ["system:masters"])
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    files = (pki_dir / "ca.crt", pki_dir / "admin.crt", pki_dir / "admin.key")
    for file, data in zip(files, (ca.cert_pem, admin.cert_pem, admin.key_pem), strict=True):
        file.write_bytes(data)
    path = config.save_config("unix:/x/master.sock", tls_files=files)
    assert os.stat(path).st_mode & 0o777 == 0o600
    saved = yaml.safe_load(path.read_text())
    assert saved["client-key"] == str(files[2]) and "client-key-data" not in saved
    target = config.resolve()
    assert target.server == "unix:/x/master.sock"
    assert target.credentials == Credentials(
        ca.cert_pem, admin.cert_pem, admin.key_pem, "localhost"
    )


class FakeError(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


SOURCE = "credentials from /home/a/alice.conf"


def test_unauthenticated_names_the_config_and_what_to_do() -> None:
    line = server_error(
        FakeError(grpc.StatusCode.UNAUTHENTICATED, "no client certificate"), "m:6443", source=SOURCE
    )
    assert line.startswith("error: the kubeling server at m:6443 does not know you")
    assert SOURCE in line and "--config" in line and "admin.conf" in line
    assert "\n" not in line


def test_permission_denied_names_the_identity_source_and_a_remedy() -> None:
    details = 'user "alice" (groups kubeling:view) may not create pods in namespace "default"'
    line = server_error(FakeError(grpc.StatusCode.PERMISSION_DENIED, details), "m", source=SOURCE)
    assert line.startswith(f"Error from server (Forbidden): {details}")
    assert SOURCE in line and "kubeling user add" in line


@pytest.mark.parametrize(
    "details",
    [
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:6443: Tls "
        "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: CERTIFICATE_VERIFY_FAILED",
        "failed to connect to all addresses; last error: UNKNOWN: unix:/x.sock: Custom "
        "verification check failed with error: UNAUTHENTICATED: Hostname Verification "
        "Check failed.",
    ],
)
def test_tls_handshake_failures_say_so(details: str) -> None:
    line = server_error(FakeError(grpc.StatusCode.UNAVAILABLE, details), "m:6443", source=SOURCE)
    assert line.startswith("error: TLS with the kubeling server at m:6443 failed")
    assert SOURCE in line and "CA" in line


def test_a_closed_connection_suggests_the_credentials_and_plain_refusal_does_not() -> None:
    closed = "last error: UNAVAILABLE: ipv4:1.2.3.4:6443: Socket closed"
    line = server_error(FakeError(grpc.StatusCode.UNAVAILABLE, closed), "m:6443", source=SOURCE)
    assert "refused your credentials" in line and SOURCE in line
    refused = "failed to connect to all addresses; last error: UNKNOWN: Connection refused"
    line = server_error(FakeError(grpc.StatusCode.UNAVAILABLE, refused), "m:6443", source=SOURCE)
    assert line.startswith("error: cannot reach the kubeling server at m:6443")


def test_forgetting_a_gone_labs_server_keeps_other_settings(tmp_path: Path) -> None:
    files = (tmp_path / "ca.crt", tmp_path / "a.crt", tmp_path / "a.key")
    path = config.save_config("unix:/lab/master.sock", tls_files=files)
    assert not config.forget_server("unix:/other.sock")  # not the default: untouched
    assert config.load_config(path)["server"] == "unix:/lab/master.sock"
    assert config.forget_server("unix:/lab/master.sock")
    assert not path.exists()
    path.write_text("server: unix:/lab/master.sock\nclient-key: /lab/k\neditor: vi\n")
    assert config.forget_server("unix:/lab/master.sock")
    assert yaml.safe_load(path.read_text()) == {"editor": "vi"}
    assert config.resolve().server == "localhost:6443"


def test_a_gone_labs_config_does_not_stop_lab_commands_but_stops_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubeling.cli.main import main

    gone = tmp_path / "gone-lab" / "master" / "pki"
    config.save_config("unix:/gone/master.sock", tls_files=(gone / "ca", gone / "c", gone / "k"))
    assert main(["lab", "status", "--dir", str(tmp_path / "nolab")]) == 1
    assert "no lab is up" in capsys.readouterr().err
    assert main(["get", "pods"]) == 1
    err = capsys.readouterr().err
    assert "certificate-authority: cannot read" in err and err.count("\n") == 1
