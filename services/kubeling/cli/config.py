"""Which server the CLI talks to, with which credentials.

The credentials come from a config file (client/config.py, like a kubeconfig:
`server`, the cluster CA, a client certificate and key), found in this order:
``--config PATH``, ``$KUBELING_CONFIG``, ``~/.kubeling/config``, then the
``admin.conf`` of a master on this machine. The server address is, most specific
first: ``--server``, ``$KUBELING_SERVER``, the config's ``server``, then
``localhost:6443``; an address given by flag or environment keeps the config's
credentials (the same cluster reached another way). Any of them may list several
masters of one cluster, ``HOST:PORT,HOST:PORT,...``: the CLI uses one of them and
another when that one is down.

Without a config the CLI talks plaintext, which only a master run with
``--insecure`` (loopback only) answers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kubeling.cli.errors import CliError
from kubeling.client.config import CONFIG_ENV, ConfigError, find_config, user_config_path
from kubeling.common.targets import TargetError, is_list, parse_list, resolve_list, split_items
from kubeling.common.tls import Credentials
from kubeling.common.token import write_private

DEFAULT_SERVER = "localhost:6443"
DEFAULT_PORT = 6443
SERVER_ENV = "KUBELING_SERVER"
_TLS_KEYS = ("certificate-authority", "client-certificate", "client-key")
# Over a unix socket gRPC checks the server's certificate against the socket path;
# the master's serving certificate names localhost, so that is the name to check.
UNIX_SERVER_NAME = "localhost"


@dataclass(frozen=True)
class Target:
    """Where the CLI's calls go and who it is there."""

    server: str
    credentials: Credentials | None = None
    config: Path | None = None  # the config file the credentials came from

    @property
    def source(self) -> str:
        """Where the credentials came from, for error messages."""
        if self.config is None:
            return (
                f"no credentials: no --config, ${CONFIG_ENV}, ~/.kubeling/config or "
                "readable master admin.conf"
            )
        if self.credentials is None:
            return f"config {self.config}, which has no client certificate"
        return f"credentials from {self.config}"


def config_path() -> Path:
    return user_config_path()


def load_config(path: Path | None = None) -> dict[str, Any]:
    """The config file's mapping as is; empty when there is no file."""
    path = path or config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CliError(f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CliError(f"{path} must hold a mapping such as 'server: HOST:PORT'")
    return data


def save_config(
    server: str,
    path: Path | None = None,
    tls_files: tuple[Path, Path, Path] | None = None,
) -> Path:
    """Remember `server` as the default, keeping any other keys in the file; with
    `tls_files` (CA certificate, client certificate, client key) also the
    credentials, by path (nothing secret is copied). Written 0600."""
    path = path or config_path()
    data = load_config(path)
    data["server"] = normalize_server(server)
    if tls_files is not None:
        for key, file in zip(_TLS_KEYS, tls_files, strict=True):
            data.pop(f"{key}-data", None)
            data[key] = str(file.resolve())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path, yaml.safe_dump(data, default_flow_style=False, sort_keys=True))
    return path


def forget_server(server: str, path: Path | None = None) -> bool:
    """Drop `server` and its credentials from the config file if it is the default
    there (a lab that is gone); the file goes when nothing else is left in it."""
    path = path or config_path()
    data = load_config(path)
    if data.get("server") != server:
        return False
    for key in ("server", *_TLS_KEYS, *(f"{k}-data" for k in _TLS_KEYS)):
        data.pop(key, None)
    if data:
        write_private(path, yaml.safe_dump(data, default_flow_style=False, sort_keys=True))
    else:
        path.unlink(missing_ok=True)
    return True


def normalize_server(server: str) -> str:
    """HOST:PORT, adding the default port when only a host is given; or a local
    socket, unix:PATH (a master on one machine, or reached from a lab's namespaces);
    or several masters of one cluster, HOST[:PORT],HOST[:PORT],... (each item as
    one address; common/targets.py checks the list: no empty item, no address
    twice, one address family)."""
    text = server.strip()
    if text.startswith("unix:"):
        return text
    if "," not in text:
        return _normalize_one(text, server)
    try:
        items = split_items(text)
    except TargetError as exc:
        raise CliError(f"invalid server list: {exc}") from None
    joined = ",".join(_normalize_one(item, server) for item in items)
    try:
        parse_list(joined)
    except TargetError as exc:
        raise CliError(f"invalid server list: {exc}") from None
    return joined


def _normalize_one(text: str, server: str) -> str:
    if text.startswith("unix:"):
        raise CliError(f'invalid server list "{server}": a unix socket cannot be part of a list')
    for scheme in ("grpc://", "http://", "https://"):
        text = text.removeprefix(scheme)
    if not text:
        raise CliError("the server address is empty; expected HOST:PORT")
    host, sep, port = text.rpartition(":")
    # "[::1]" and plain hosts have no port; "::1" alone is ambiguous, so it needs brackets.
    if not sep or host.endswith(":") or (text.startswith("[") and text.endswith("]")):
        return f"{text}:{DEFAULT_PORT}"
    if not port.isdigit():
        raise CliError(f'invalid server address "{server}": expected HOST:PORT')
    return text


def resolve(server_flag: str | None = None, config_flag: Path | None = None) -> Target:
    """The server and credentials to use (see the module's order)."""
    try:
        found = find_config(config_flag)
    except ConfigError as exc:
        raise CliError(f"error: {exc}") from None
    from_env = os.environ.get(SERVER_ENV, "").strip()
    if server_flag:
        server = normalize_server(server_flag)
    elif from_env:
        server = normalize_server(from_env)
    elif found.server:
        server = normalize_server(found.server)
    else:
        server = DEFAULT_SERVER
    if is_list(server):
        try:
            # Names in a list are resolved when the channel is made; fail here, in words.
            resolve_list(server)
        except TargetError as exc:
            raise CliError(f"error: {exc}") from None
    credentials = found.credentials
    if credentials is not None and server.startswith("unix:") and not credentials.server_name:
        credentials = credentials.with_server_name(UNIX_SERVER_NAME)
    return Target(server, credentials, found.path)


def resolve_server(flag: str | None = None) -> str:
    return resolve(flag).server
