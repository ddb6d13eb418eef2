"""Client credentials, like a kubeconfig: which master, which CA, which identity.

A config file is YAML:

    server: 10.0.0.1:6443                 # HOST:PORT (or unix:PATH for plaintext),
                                          # or masters: 10.0.0.1:6443,10.0.0.2:6443
    certificate-authority-data: <PEM>     # or certificate-authority: PATH
    client-certificate-data: <PEM>        # or client-certificate: PATH
    client-key-data: <PEM>                # or client-key: PATH

Several masters of one cluster are one comma-separated `server` (every item
HOST:PORT, one address family; common/targets.py): clients use one and move to
another when it goes away.

Paths are relative to the file's directory. The master writes one for its admin
at its first start (`DATA_DIR/admin.conf`, mode 0600, data inline so it can be
copied as is); `kubeling user add` makes more. Without the three TLS entries the
client talks plaintext (a master run with --insecure on loopback).

Where a client finds it, first match wins: an explicit path, `$KUBELING_CONFIG`,
`~/.kubeling/config`, then the admin.conf of a master on this machine (the default
data directories) when it is readable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubeling.common.targets import TargetError, is_list, parse_list
from kubeling.common.tls import Credentials
from kubeling.common.token import write_private

CONFIG_ENV = "KUBELING_CONFIG"
_FIELDS = (
    ("certificate-authority", "ca_pem"),
    ("client-certificate", "cert_pem"),
    ("client-key", "key_pem"),
)


class ConfigError(Exception):
    """A config file that cannot be read or used (the message says which and why)."""


def user_config_path() -> Path:
    # Path.home() reads $HOME, which lets tests and `lab` sandboxes redirect it.
    return Path.home() / ".kubeling" / "config"


def master_admin_configs() -> list[Path]:
    """Where a master on this machine keeps its admin credential (its default data
    directories: root's, then this user's)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return [
        Path("/var/lib/kubeling/master/admin.conf"),
        Path(base) / "kubeling" / "master" / "admin.conf",
    ]


@dataclass(frozen=True)
class ClientConfig:
    server: str = ""
    credentials: Credentials | None = None
    path: Path | None = None  # where it was read from

    def to_yaml(self) -> str:
        data: dict[str, Any] = {}
        if self.server:
            data["server"] = self.server
        if self.credentials is not None:
            for key, attr in _FIELDS:
                data[f"{key}-data"] = getattr(self.credentials, attr).decode()
        return yaml.safe_dump(data, default_flow_style=False, sort_keys=False)

    def save(self, path: Path) -> None:
        """Written with mode 0600: it holds a private key."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, self.to_yaml())


def read_config(path: Path) -> ClientConfig:
    """The config at `path`; ConfigError naming the file and the problem."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping such as 'server: HOST:PORT'")
    pems: dict[str, bytes] = {}
    for key, attr in _FIELDS:
        inline, file = data.get(f"{key}-data"), data.get(key)
        if inline:
            pems[attr] = str(inline).encode()
        elif file:
            source = (path.parent / str(file)).expanduser()
            try:
                pems[attr] = source.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{path}: {key}: cannot read {source}: {exc.strerror}") from None
    if pems and len(pems) != len(_FIELDS):
        missing = [key for key, attr in _FIELDS if attr not in pems]
        raise ConfigError(f"{path}: TLS needs all three entries; missing {', '.join(missing)}")
    credentials = Credentials(pems["ca_pem"], pems["cert_pem"], pems["key_pem"]) if pems else None
    server = str(data.get("server") or "").strip()
    if is_list(server):
        try:
            parse_list(server)
        except TargetError as exc:
            raise ConfigError(f"{path}: server: {exc}") from None
    return ClientConfig(server, credentials, path)


def find_config(path: Path | None = None) -> ClientConfig:
    """The config to use (see the module's order); an empty one when there is none."""
    if path is not None:
        return read_config(path)
    from_env = os.environ.get(CONFIG_ENV, "").strip()
    if from_env:
        return read_config(Path(from_env))
    for candidate in (user_config_path(), *master_admin_configs()):
        if candidate.exists() and os.access(candidate, os.R_OK):
            return read_config(candidate)
    return ClientConfig()
