"""`kubeling-master`: the API server (with its in-process controllers).

Secure by default: mutual TLS with the cluster CA made at the first start in
DATA_DIR/pki, authorization of every call, a join port (--join-listen) for new
nodes. --insecure serves plaintext, on loopback or a unix socket only, without
authorization (tests, a one-machine experiment)."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from pathlib import Path

import structlog

from kubeling.common import machine, pki
from kubeling.common.duration import parse_duration
from kubeling.common.lifecycle import until_terminated
from kubeling.common.logging import setup_logging
from kubeling.common.proctitle import set_process_name
from kubeling.common.rpc import PlaintextRefused
from kubeling.controllers.manager import ControllerSettings
from kubeling.master import cluster_ca
from kubeling.master.event_ttl import DEFAULT_EVENT_TTL
from kubeling.master.limits import (
    DEFAULT_MAX_REQUESTS_INFLIGHT,
    DEFAULT_MAX_REQUESTS_INFLIGHT_PER_CLIENT,
    DEFAULT_MAX_SESSIONS_PER_CLIENT,
    DEFAULT_MAX_WATCHES_PER_CLIENT,
)
from kubeling.master.server import DEFAULT_METRICS_PORT, Master, MasterConfig
from kubeling.master.store.etcd import DEFAULT_PREFIX, EtcdStoreError
from kubeling.master.strategies import DEFAULT_SERVICE_CIDR

log = structlog.get_logger(__name__)


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/kubeling/master")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "kubeling" / "master"


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return seconds


_DAYS = re.compile(r"^(\d+(?:\.\d*)?)d(.*)$")


def _validity(text: str) -> float:
    """A duration that may also count days: 365d, 30d12h, 8760h, 3600."""
    match = _DAYS.match(text.strip())
    seconds = 0.0
    if match:
        seconds, text = float(match.group(1)) * 86400, match.group(2)
        if not text:
            return seconds if seconds > 0 else _duration("0")
    return seconds + _duration(text)


def _sans(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if not (cluster_ca.pki_dns_ok(name) or cluster_ca.is_ip(name)):
            raise argparse.ArgumentTypeError(f"{name!r} is neither an IP address nor a DNS name")
    return names


class _Replaced(argparse.Action):
    """The old single, never-expiring token file: refused with what replaces it."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        parser.error(
            "--join-token-file is gone: make bootstrap tokens with "
            "`kubeling token create` (see deploy/README.md)"
        )


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """--store and the etcd flags (the master, backup and restore take them)."""
    parser.add_argument(
        "--store",
        default="sqlite",
        help="where the cluster's state lives: sqlite (DATA_DIR/state.db, one master) or "
        "etcd://HOST:PORT,HOST:PORT,... (shared by every master given the same list)",
    )
    parser.add_argument(
        "--etcd-prefix", default=DEFAULT_PREFIX, help="the etcd key prefix of this cluster"
    )
    for name, what in (
        ("cafile", "the CA that signed etcd's serving certificates"),
        ("certfile", "the client certificate to present to etcd"),
        ("keyfile", "its key"),
    ):
        parser.add_argument(
            f"--etcd-{name}",
            type=Path,
            default=None,
            help=f"{what} (default: the master's own from the cluster CA, "
            "DATA_DIR/pki/etcd-client.*; see kubeling-master etcd-certs)",
        )


def store_config(args: argparse.Namespace, data_dir: Path, tls: bool) -> MasterConfig:
    """A MasterConfig holding just what picks and reaches the store."""
    return MasterConfig(
        data_dir=data_dir,
        tls=tls,
        store=args.store,
        etcd_prefix=args.etcd_prefix,
        etcd_cafile=args.etcd_cafile,
        etcd_certfile=args.etcd_certfile,
        etcd_keyfile=args.etcd_keyfile,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kubeling-master", description=__doc__)
    parser.add_argument(
        "--listen",
        default="0.0.0.0:6443",
        help="HOST:PORT to serve on; several comma-separated (10.0.0.1:6443,unix:/run/m.sock)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="where the store lives")
    parser.add_argument("--service-cidr", default=DEFAULT_SERVICE_CIDR)
    parser.add_argument(
        "--history", type=int, default=10_000, help="revisions kept for watches to resume from"
    )
    parser.add_argument("--bookmark-interval", type=float, default=10.0, help="seconds")
    parser.add_argument(
        "--event-ttl",
        type=_duration,
        default=DEFAULT_EVENT_TTL,
        help="Events are deleted this long after their last write: seconds or 1h, 90m (1h)",
    )
    parser.add_argument(
        "--controllers",
        default="*",
        help='controllers to run in the master: "*" (all), a comma list, or "" for none',
    )
    parser.add_argument("--node-monitor-grace-period", type=float, default=50.0)
    parser.add_argument("--pod-eviction-timeout", type=float, default=300.0)
    parser.add_argument(
        "--cluster-cidr",
        default="",
        help='pod CIDRs for Nodes are allocated from this range ("": none are allocated)',
    )
    parser.add_argument(
        "--node-cidr-mask-size", type=int, default=24, help="prefix length of each Node's pod CIDR"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve plaintext without authorization: only on loopback or a unix socket "
        "(tests, one-machine experiments); no join port, no certificates",
    )
    parser.add_argument(
        "--join-listen",
        default="0.0.0.0:6444",
        help="HOST:PORT where new nodes join (TLS without a client certificate; only "
        'Certificates/Join with a bootstrap token is served there); "" for none',
    )
    parser.add_argument(
        "--tls-san",
        type=_sans,
        action="append",
        default=[],
        help="another IP or DNS name for the serving certificate (repeatable, or a comma list)",
    )
    parser.add_argument(
        "--cert-validity",
        type=_validity,
        default=cluster_ca.DEFAULT_CERT_VALIDITY,
        help="how long the certificates the master signs are valid: 365d, 720h, seconds (365d)",
    )
    # Bootstrap tokens are always on now; the flag stays accepted.
    parser.add_argument("--bootstrap-tokens", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--join-token-file", action=_Replaced, help=argparse.SUPPRESS, nargs="?")
    parser.add_argument(
        "--advertise-address",
        default="",
        help="the address workers use: in the serving certificate, admin.conf and the join "
        "command (default: the listen host or this machine's address)",
    )
    parser.add_argument(
        "--metrics-bind-address",
        default=f"127.0.0.1:{DEFAULT_METRICS_PORT}",
        help='HOST:PORT for /metrics, /healthz and /livez (port 0: any free port; "": none)',
    )
    parser.add_argument(
        "--loop-crash-limit",
        type=int,
        default=10,
        help="a loop (controller, scheduler, ...) crashing this often in 5 minutes gives "
        "up: health turns NOT_SERVING and the master exits 1 (for systemd to restart it)",
    )
    parser.add_argument(
        "--max-requests-inflight",
        type=int,
        default=DEFAULT_MAX_REQUESTS_INFLIGHT,
        help="short requests served at once; more are answered RESOURCE_EXHAUSTED (0: no limit)",
    )
    parser.add_argument(
        "--max-requests-inflight-per-client",
        type=int,
        default=DEFAULT_MAX_REQUESTS_INFLIGHT_PER_CLIENT,
        help="short requests one client (by certificate identity; with --insecure by peer "
        "address) may have in flight; more are answered RESOURCE_EXHAUSTED (0: no limit)",
    )
    parser.add_argument(
        "--max-watches-per-client",
        type=int,
        default=DEFAULT_MAX_WATCHES_PER_CLIENT,
        help="Watch streams one client (by certificate identity; with --insecure by peer "
        "address) may hold open (0: no limit)",
    )
    parser.add_argument(
        "--max-pod-sessions-per-client",
        type=int,
        default=DEFAULT_MAX_SESSIONS_PER_CLIENT,
        help="pod logs, exec, attach and port-forward calls one client may hold open (0: no limit)",
    )
    add_store_arguments(parser)
    parser.add_argument("--log-level", default=os.environ.get("KUBELING_LOG_LEVEL", "info"))
    args = parser.parse_args(argv)
    args.tls_san = [name for names in args.tls_san for name in names]
    return args


TOKEN_PATH = "/etc/kubeling/join-token"


def _reachable(address: str, advertise: str, default_port: int) -> str:
    """HOST:PORT other machines use for a listen address: the advertise address or
    the listen host (a wildcard: this machine's address)."""
    host, _, port = address.strip().rpartition(":")
    host = host.strip("[]")
    if advertise:
        host = advertise
    elif host in ("", "0.0.0.0", "::"):
        host = machine.node_ip()
    return cluster_ca.host_port(host, port or default_port)


def join_command(
    listen: str, advertise: str, token: str, join_listen: str = "0.0.0.0:6444", pin: str = ""
) -> str:
    """What to run on a worker to join this master: the token goes into a file
    (`echo` is a shell builtin, so it never shows in `ps`), not onto argv; the CA
    pin lets the kubelet check the master before it sends the token."""
    first = next((a for a in listen.split(",") if not a.strip().startswith("unix:")), ":6443")
    master = _reachable(first, advertise, 6443)
    command = (
        f"(umask 077; mkdir -p {TOKEN_PATH.rpartition('/')[0]}; echo {token} > {TOKEN_PATH})\n"
        f"  kubeling-kubelet --master {master}"
    )
    join = join_listen.split(",")[0].strip()
    if join:
        # A wildcard join host is reached where the master is.
        host, _, port = join.rpartition(":")
        if advertise or host.strip("[]") in ("", "0.0.0.0", "::"):
            host = master.rpartition(":")[0]
        command += f" --join-address {host}:{port or 6444}"
    command += f" --token-file {TOKEN_PATH}"
    if pin:
        command += f" --discovery-token-ca-cert-hash {pin}"
    return command


async def first_token(master: Master, config: MasterConfig, advertise: str) -> None:
    """On the first start, a token and the join command, for a person at a terminal
    only: a secret printed otherwise ends up in a log."""
    if master.ca is None or not config.join_listen or master.tokens.exists:
        return
    if not sys.stdout.isatty():
        log.info(
            "no join token printed (not a terminal); make one on this machine with "
            "`kubeling token create`"
        )
        return
    token, _ = await master.tokens.issue(description="made at the master's first start")
    print(
        "To join a worker (token valid 24h; more: kubeling token create), run on it, "
        "with containerd running (see deploy/README.md):\n  "
        + join_command(config.listen, advertise, token, config.join_listen, master.ca.pin)
        + f"\nThe admin credential is {master.admin_conf} (copy it to ~/.kubeling/config).",
        flush=True,
    )


async def serve(config: MasterConfig, advertise: str = "") -> int:
    """Serve until SIGTERM/SIGINT (0) or until a supervised loop gives up (1)."""
    try:
        master = Master(config)
    except (ValueError, OSError, pki.PkiError, EtcdStoreError) as exc:
        # PlaintextRefused is a ValueError; CA trouble names its files.
        print(f"kubeling-master: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        await master.start()
    except PlaintextRefused as exc:
        print(f"kubeling-master: {exc} (drop --insecure to serve TLS)", file=sys.stderr)
        await master.stop()
        return 2
    except EtcdStoreError as exc:
        print(f"kubeling-master: {exc}", file=sys.stderr, flush=True)
        await master.stop()
        return 2
    await first_token(master, config, advertise)
    code = await until_terminated(master.supervisor)
    await master.stop()
    return code


def main(argv: list[str] | None = None) -> None:
    given = sys.argv[1:] if argv is None else argv
    if given[:1] in (["backup"], ["restore"]):
        from kubeling.master.backup import main as backup_main

        sys.exit(backup_main(given))
    if given[:1] == ["etcd-certs"]:
        from kubeling.master.etcd_pki import main as etcd_certs_main

        sys.exit(etcd_certs_main(given[1:]))
    args = parse_args(argv)
    set_process_name("kubeling-master")
    setup_logging(args.log_level)
    config = MasterConfig(
        tls=not args.insecure,
        join_listen="" if args.insecure else args.join_listen,
        tls_sans=args.tls_san,
        cert_validity=args.cert_validity,
        advertise_address=args.advertise_address,
        metrics_bind=args.metrics_bind_address,
        loop_crash_limit=args.loop_crash_limit,
        max_requests_inflight=args.max_requests_inflight,
        max_watches_per_client=args.max_watches_per_client,
        max_sessions_per_client=args.max_pod_sessions_per_client,
        max_requests_inflight_per_client=args.max_requests_inflight_per_client,
        listen=args.listen,
        store=args.store,
        etcd_prefix=args.etcd_prefix,
        etcd_cafile=args.etcd_cafile,
        etcd_certfile=args.etcd_certfile,
        etcd_keyfile=args.etcd_keyfile,
        data_dir=args.data_dir or default_data_dir(),
        service_cidr=args.service_cidr,
        history=args.history,
        bookmark_interval=args.bookmark_interval,
        event_ttl=args.event_ttl,
        controllers={name.strip() for name in args.controllers.split(",") if name.strip()},
        controller_settings=ControllerSettings(
            node_monitor_grace_period=args.node_monitor_grace_period,
            pod_eviction_timeout=args.pod_eviction_timeout,
            cluster_cidr=args.cluster_cidr,
            node_cidr_mask_size=args.node_cidr_mask_size,
        ),
    )
    sys.exit(asyncio.run(serve(config, args.advertise_address)))


if __name__ == "__main__":
    main()
