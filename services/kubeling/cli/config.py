"""Which server the CLI talks to, and the small config file that remembers it.

Resolution order, most specific first: ``--server``, ``$KUBELING_SERVER``,
``~/.kubeling/config`` (YAML ``server: HOST:PORT``), then ``localhost:6443``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from kubeling.cli.errors import CliError

DEFAULT_SERVER = "localhost:6443"
DEFAULT_PORT = 6443
SERVER_ENV = "KUBELING_SERVER"


def config_path() -> Path:
    # Path.home() reads $HOME, which lets tests and `lab` sandboxes redirect it.
    return Path.home() / ".kubeling" / "config"


def load_config(path: Path | None = None) -> dict[str, Any]:
    """The config file's mapping; empty when there is no file."""
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


def save_config(server: str, path: Path | None = None) -> Path:
    """Remember `server` as the default, keeping any other keys in the file."""
    path = path or config_path()
    data = load_config(path)
    data["server"] = normalize_server(server)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Write then rename so a crash never leaves a half-written config behind.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data, default_flow_style=False, sort_keys=True))
    tmp.replace(path)
    return path


def normalize_server(server: str) -> str:
    """HOST:PORT, adding the default port when only a host is given; or a local
    socket, unix:PATH (a master on one machine, or reached from a lab's namespaces)."""
    text = server.strip()
    if text.startswith("unix:"):
        return text
    for scheme in ("grpc://", "http://"):
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


def resolve_server(flag: str | None = None) -> str:
    if flag:
        return normalize_server(flag)
    from_env = os.environ.get(SERVER_ENV, "").strip()
    if from_env:
        return normalize_server(from_env)
    from_file = load_config().get("server")
    if from_file:
        return normalize_server(str(from_file))
    return DEFAULT_SERVER
