"""Lists of master addresses (common/targets.py) as every client takes them: the
parsing and its errors, the one gRPC channel a list becomes, the CLI's --server,
a config file's server, the kubelet's and proxy's --master and --join-address, and
the in-cluster names every master certificate carries for it. No master runs here
(tests/integration/test_master_failover.py fails over between real ones)."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from kubeling.cli import config as cli_config
from kubeling.cli.errors import CliError
from kubeling.client import bootstrap
from kubeling.client.config import ConfigError, read_config
from kubeling.common import rpc, targets
from kubeling.common.targets import Endpoint, TargetError
from kubeling.kubelet import main as kubelet_main
from kubeling.master import cluster_ca
from kubeling.proxy import main as proxy_main


def test_a_list_is_parsed_into_endpoints() -> None:
    assert targets.parse_list(" 10.0.0.1:6443, 10.0.0.2:7443 ") == [
        Endpoint("10.0.0.1", 6443),
        Endpoint("10.0.0.2", 7443),
    ]
    assert targets.parse_list("[fd00::1]:6443,[fd00::2]:6443") == [
        Endpoint("fd00::1", 6443),
        Endpoint("fd00::2", 6443),
    ]
    # gRPC's own spelling is accepted too; names and IPs may be mixed.
    assert targets.parse_list("ipv4:10.0.0.1:1,master-2:2") == [
        Endpoint("10.0.0.1", 1),
        Endpoint("master-2", 2),
    ]
    assert targets.parse_list("a,b", default_port=6443) == [
        Endpoint("a", 6443),
        Endpoint("b", 6443),
    ]
    assert str(Endpoint("fd00::1", 6443)) == "[fd00::1]:6443"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1:6443,,10.0.0.2:6443", "item 2 of the list is empty"),
        ("10.0.0.1:6443,", "item 2 of the list is empty"),
        (",10.0.0.1:6443", "item 1 of the list is empty"),
        ("10.0.0.1:6443,10.0.0.2", '"10.0.0.2": no port'),
        ("10.0.0.1:6443,[fd00::2]:6443", "mixes IPv4 and IPv6"),
        ("10.0.0.1:6443,10.0.0.1:6443", "10.0.0.1:6443 is listed twice"),
        ("10.0.0.1:6443,10.0.0.2:0", "from 1 to 65535"),
        ("10.0.0.1:6443,10.0.0.2:70000", "from 1 to 65535"),
        ("10.0.0.1:6443,10.0.0.2:https", "from 1 to 65535"),
        ("[fd00::1]:6443,fd00::2:6443", "IPv6 address in brackets"),
        ("[fd00::1:6443,[fd00::2]:6443", 'without "]"'),
        ("[10.0.0.1]:6443,10.0.0.2:6443", "not an IPv6 address"),
        ("10.0.0.1:6443,:6443", "no host"),
        ("10.0.0.1:6443,unix:/run/m.sock", "unix socket cannot be part of a list"),
        (" ", "empty"),
    ],
)
def test_a_bad_list_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(TargetError, match=message.replace("[", r"\[").replace("]", r"\]")):
        targets.parse_list(text)


def test_one_address_goes_to_grpc_as_it_is() -> None:
    for target in ("localhost:6443", "10.0.0.1:6443", "unix:/run/kubeling.sock", "dns:///m:1"):
        assert targets.grpc_target(target) == targets.GrpcTarget(target)
    assert not targets.is_list("10.0.0.1:6443")
    assert targets.is_list("10.0.0.1:6443,10.0.0.2:6443")


def test_a_list_is_one_grpc_target_checked_by_the_masters_common_name() -> None:
    four = targets.grpc_target("10.0.0.1:6443,10.0.0.2:6443")
    assert four.target == "ipv4:10.0.0.1:6443,10.0.0.2:6443"
    assert four.server_name == targets.MASTER_SERVER_NAME == "kubernetes"
    assert four.load_balancing == {"pick_first": {"shuffleAddressList": True}}
    six = targets.grpc_target("[fd00::1]:6443,[fd00::2]:6443")
    assert six.target == "ipv6:[fd00::1]:6443,[fd00::2]:6443"


def _fake_resolver(monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str]]) -> list[str]:
    """getaddrinfo answering from `names` (no DNS traffic); returns the names asked."""
    asked: list[str] = []

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for address in names[host]:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            out.append((family, socket.SOCK_STREAM, 6, "", (address, 0)))
        return out

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_names_in_a_list_are_resolved_when_the_channel_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = _fake_resolver(
        monkeypatch,
        {"m1": ["10.0.0.1", "fd00::1"], "m2": ["10.0.0.2", "10.0.0.12"], "v6only": ["fd00::3"]},
    )
    assert targets.grpc_target("m1:6443,m2:7443").target == (
        "ipv4:10.0.0.1:6443,10.0.0.2:7443,10.0.0.12:7443"
    )
    assert asked == ["m1", "m2"]
    # The family of the list's IP literals decides; a name without one is left out.
    assert targets.grpc_target("[fd00::9]:1,m1:1").target == "ipv6:[fd00::9]:1,[fd00::1]:1"
    assert targets.grpc_target("10.0.0.9:1,v6only:1,nowhere:1").target == "ipv4:10.0.0.9:1"
    # Only names: IPv4 when every name has an IPv4 address, else IPv6.
    assert targets.grpc_target("m1:1,v6only:1").target == "ipv6:[fd00::1]:1,[fd00::3]:1"
    with pytest.raises(TargetError, match="no address of any master could be resolved"):
        targets.grpc_target("nowhere:1,elsewhere:1")


async def test_rpc_channel_takes_a_list_and_refuses_a_bad_one() -> None:
    channel = rpc.channel("127.0.0.1:1,127.0.0.2:2")
    await channel.close()
    with pytest.raises(TargetError, match="mixes IPv4 and IPv6"):
        rpc.channel("127.0.0.1:1,[::1]:2")


def test_the_service_config_joins_balancing_and_retries() -> None:
    retry = {"name": [{"service": "s", "method": "Get"}], "retryPolicy": {"maxAttempts": 2}}
    text = targets.service_config({"pick_first": {"shuffleAddressList": True}}, [retry])
    assert json.loads(text) == {
        "loadBalancingConfig": [{"pick_first": {"shuffleAddressList": True}}],
        "methodConfig": [retry],
    }
    assert targets.service_config(None) == ""


def test_reads_are_retried_when_a_master_goes_and_writes_are_not() -> None:
    from kubeling.client.client import READ_RETRY

    methods = {(n["service"], n["method"]) for n in READ_RETRY["name"]}
    assert ("kubeling.v1.Pods", "Get") in methods
    assert ("kubeling.v1.Namespaces", "Watch") in methods
    assert not any(m in {"Create", "Update", "UpdateStatus", "Delete"} for _, m in methods)
    # CANCELLED: what a master shutting down answers to calls it had not started.
    assert READ_RETRY["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE", "CANCELLED"]


# -- the CLI -----------------------------------------------------------------------


def test_the_cli_server_takes_a_list(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli_config.normalize_server("a, b:7 ,https://c") == "a:6443,b:7,c:6443"
    assert cli_config.normalize_server("[fd00::1],[fd00::2]:7") == "[fd00::1]:6443,[fd00::2]:7"
    monkeypatch.setenv(cli_config.SERVER_ENV, "127.0.0.1:1,127.0.0.2:2")
    assert cli_config.resolve().server == "127.0.0.1:1,127.0.0.2:2"
    assert cli_config.resolve("127.0.0.3,127.0.0.4").server == "127.0.0.3:6443,127.0.0.4:6443"


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ("127.0.0.1:1,,127.0.0.2:2", "item 2 of the list is empty"),
        ("127.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
        ("127.0.0.1:1,unix:/x.sock", "unix socket cannot be part of a list"),
        ("127.0.0.1:6443,127.0.0.1", "listed twice"),
        ("127.0.0.1:1,h:port", "expected HOST:PORT"),
    ],
)
def test_the_cli_refuses_a_bad_list_in_words(server: str, message: str) -> None:
    with pytest.raises(CliError, match=message):
        cli_config.resolve(server)


def test_the_cli_says_when_no_master_of_a_list_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_resolver(monkeypatch, {})
    with pytest.raises(CliError, match="no address of any master could be resolved"):
        cli_config.resolve("m1:1,m2:2")


def test_a_config_file_server_may_list_masters(tmp_path: Path) -> None:
    path = tmp_path / "c.conf"
    path.write_text("server: 10.0.0.1:6443,10.0.0.2:6443\n")
    assert read_config(path).server == "10.0.0.1:6443,10.0.0.2:6443"
    path.write_text("server: 10.0.0.1:6443,10.0.0.2\n")
    with pytest.raises(ConfigError, match=f"{path}: server: .*no port"):
        read_config(path)


# -- the kubelet and kube-proxy --------------------------------------------------------

PROGRAMS = [
    pytest.param(kubelet_main.parse_args, id="kubelet"),
    pytest.param(proxy_main.parse_args, id="proxy"),
]


@pytest.mark.parametrize("parse", PROGRAMS)
def test_master_lists_on_the_node_command_lines(parse: Any) -> None:
    args = parse(["--master", "10.0.0.1:6443,10.0.0.2:6443"])
    assert args.master == "10.0.0.1:6443,10.0.0.2:6443"
    assert args.join_address == "10.0.0.1:6444,10.0.0.2:6444"
    six = parse(["--master", "[fd00::1]:6443,[fd00::2]:6443"])
    assert six.join_address == "[fd00::1]:6444,[fd00::2]:6444"
    given = parse(["--master", "10.0.0.1:6443,10.0.0.2:6443", "--join-address", "10.0.0.9:1"])
    assert given.join_address == "10.0.0.9:1"
    local = parse(["--master", "127.0.0.1:6443,127.0.0.2:6443", "--insecure"])
    assert local.insecure


@pytest.mark.parametrize("parse", PROGRAMS)
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--master", "10.0.0.1:6443,"], "--master: .*item 2 of the list is empty"),
        (["--master", "10.0.0.1:6443,10.0.0.2"], "--master: .*no port"),
        (["--master", "10.0.0.1:6443,[fd00::2]:6443"], "--master: .*mixes IPv4 and IPv6"),
        (
            ["--master", "10.0.0.1:6443", "--join-address", "10.0.0.1:1,,10.0.0.2:1"],
            "--join-address: .*item 2",
        ),
        (
            ["--master", "127.0.0.1:6443,10.0.0.2:6443", "--insecure"],
            "only to a master on this machine",
        ),
    ],
)
def test_a_bad_master_list_stops_the_node_programs(
    parse: Any, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(argv)
    assert exited.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_fetch_ca_tries_the_next_join_port_and_stops_at_a_wrong_ca() -> None:
    # Two closed ports: both are named in the error; nothing else is tried.
    closed = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed.append(f"127.0.0.1:{sock.getsockname()[1]}")
    with pytest.raises(bootstrap.BootstrapError) as failed:
        bootstrap.fetch_ca(",".join(closed), "sha256:" + "ab" * 32, timeout=2)
    assert closed[0] in str(failed.value) and closed[1] in str(failed.value)


# -- the masters' certificates -------------------------------------------------------


def test_every_master_certificate_carries_the_in_cluster_names() -> None:
    _, dns = cluster_ca.wanted_sans(["10.0.0.1:6443"], "192.0.2.1", ["m.example"])
    assert {
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    } <= set(dns)
    assert targets.MASTER_SERVER_NAME in dns
