"""`kubeling proxy explain NODE IP:PORT[/PROTO]`: parsing the target."""

from __future__ import annotations

import pytest

from kubeling.cli.commands.proxy import parse_target
from kubeling.cli.errors import CliError


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("10.96.0.10:80/udp", ("10.96.0.10", 80, "UDP")),
        ("10.96.0.10:80/UDP", ("10.96.0.10", 80, "UDP")),
        ("10.96.0.10:80", ("10.96.0.10", 80, "TCP")),
        ("10.96.0.10:80/", ("10.96.0.10", 80, "TCP")),
        ("192.168.1.10:30080/sctp", ("192.168.1.10", 30080, "SCTP")),
    ],
)
def test_parse_target(text: str, parsed: tuple[str, int, str]) -> None:
    assert parse_target(text) == parsed


@pytest.mark.parametrize(
    "text", ["10.96.0.10", "10.96.0.10:", ":80", "10.96.0.10:http", "10.96.0.10:-1/udp", ""]
)
def test_parse_target_errors(text: str) -> None:
    with pytest.raises(CliError) as caught:
        parse_target(text)
    assert caught.value.message == f'error: "{text}" is not IP:PORT[/PROTO]'
    assert caught.value.exit_code == 1
