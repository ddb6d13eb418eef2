"""Client config files (client/config.py): inline PEM data or paths relative to the
file, all three TLS entries or none, written 0600, and where a client finds one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kubeling.client import config as config_module
from kubeling.client.config import (
    CONFIG_ENV,
    ClientConfig,
    ConfigError,
    find_config,
    read_config,
)
from kubeling.common.tls import Credentials

CREDS = Credentials(b"CA PEM\n", b"CERT PEM\n", b"KEY PEM\n")


def test_a_saved_config_reads_back_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "admin.conf"
    ClientConfig("10.0.0.1:6443", CREDS).save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    config = read_config(path)
    assert (config.server, config.credentials, config.path) == ("10.0.0.1:6443", CREDS, path)


def test_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    for name, data in (
        ("ca.crt", CREDS.ca_pem),
        ("u.crt", CREDS.cert_pem),
        ("u.key", CREDS.key_pem),
    ):
        (tmp_path / "pki" / name).write_bytes(data)
    path = tmp_path / "config"
    path.write_text(
        "server: m:6443\ncertificate-authority: pki/ca.crt\n"
        "client-certificate: pki/u.crt\nclient-key: pki/u.key\n"
    )
    assert read_config(path).credentials == CREDS


def test_half_a_tls_config_or_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("server: m:6443\ncertificate-authority-data: x\n")
    with pytest.raises(ConfigError, match="missing client-certificate, client-key"):
        read_config(path)
    path.write_text("server: m:6443\ncertificate-authority: nowhere.crt\nclient-certificate: a\n")
    with pytest.raises(ConfigError, match="certificate-authority: cannot read"):
        read_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        read_config(path)


def test_a_config_without_tls_entries_is_plaintext(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("server: 127.0.0.1:6443\n")
    assert read_config(path).credentials is None


def test_the_environment_wins_over_the_home_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.setattr(config_module, "master_admin_configs", lambda: [])
    assert find_config() == ClientConfig()
    ClientConfig("home:6443").save(tmp_path / ".kubeling" / "config")
    assert find_config().server == "home:6443"
    ClientConfig("env:6443").save(tmp_path / "env.conf")
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "env.conf"))
    assert find_config().server == "env:6443"
    assert find_config(tmp_path / ".kubeling" / "config").server == "home:6443"


def test_a_local_masters_admin_config_is_found_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    # The root data directory's file is not looked at here: a real master may run.
    default = config_module.master_admin_configs()
    assert default[0] == Path("/var/lib/kubeling/master/admin.conf")
    monkeypatch.setattr(config_module, "master_admin_configs", lambda: default[1:])
    ClientConfig("local-master:6443", CREDS).save(
        tmp_path / "xdg" / "kubeling" / "master" / "admin.conf"
    )
    assert find_config().server == "local-master:6443"
