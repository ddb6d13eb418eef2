"""`kubeling-master`: the API server (with its in-process controllers)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import structlog

from kubeling.common import machine
from kubeling.common.duration import parse_duration
from kubeling.common.lifecycle import until_terminated
from kubeling.common.logging import setup_logging
from kubeling.common.proctitle import set_process_name
from kubeling.controllers.manager import ControllerSettings
from kubeling.master.event_ttl import DEFAULT_EVENT_TTL
from kubeling.master.limits import DEFAULT_MAX_REQUESTS_INFLIGHT, DEFAULT_MAX_WATCHES_PER_CLIENT
from kubeling.master.server import DEFAULT_METRICS_PORT, Master, MasterConfig
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


class _Replaced(argparse.Action):
    """The old single, never-expiring token file: refused with what replaces it."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        parser.error(
            "--join-token-file is gone: use --bootstrap-tokens and make tokens with "
            "`kubeling token create` (see deploy/README.md)"
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
        "--bootstrap-tokens",
        action="store_true",
        help="registering a Node needs a bootstrap token (kubeling token create; kept hashed "
        "in the data dir); on a terminal, the first start prints a join command with one",
    )
    parser.add_argument("--join-token-file", action=_Replaced, help=argparse.SUPPRESS, nargs="?")
    parser.add_argument(
        "--advertise-address",
        default="",
        help="the address workers use, for the join command (default: the listen host "
        "or this machine's address)",
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
        "--max-watches-per-client",
        type=int,
        default=DEFAULT_MAX_WATCHES_PER_CLIENT,
        help="Watch streams one client (by peer address) may hold open (0: no limit)",
    )
    parser.add_argument("--log-level", default=os.environ.get("KUBELING_LOG_LEVEL", "info"))
    return parser.parse_args(argv)


TOKEN_PATH = "/etc/kubeling/join-token"


def join_command(listen: str, advertise: str, token: str) -> str:
    """What to run on a worker to join this master: the token goes into a file
    (`echo` is a shell builtin, so it never shows in `ps`), not onto argv."""
    first = listen.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if not advertise:
        advertise = host if host not in ("", "0.0.0.0", "[::]") else machine.node_ip()
    return (
        f"(umask 077; mkdir -p {TOKEN_PATH.rpartition('/')[0]}; echo {token} > {TOKEN_PATH})\n"
        f"  kubeling-kubelet --master {advertise}:{port or 6443} --token-file {TOKEN_PATH} "
        "--node-name $(hostname)"
    )


def first_token(master: Master, config: MasterConfig, advertise: str) -> None:
    """On the first start, a token and the join command, for a person at a terminal
    only: a secret printed otherwise ends up in a log."""
    if master.tokens is None or master.tokens.exists:
        return
    if not sys.stdout.isatty():
        log.info(
            "no join token printed (not a terminal); make one on this machine with "
            "`kubeling token create`"
        )
        return
    token, _ = master.tokens.create(description="made at the master's first start")
    print(
        "To join a worker (token valid 24h; more: kubeling token create), run on it, "
        "with containerd running (see deploy/README.md):\n  "
        + join_command(config.listen, advertise, token),
        flush=True,
    )


async def serve(config: MasterConfig, advertise: str = "") -> int:
    """Serve until SIGTERM/SIGINT (0) or until a supervised loop gives up (1)."""
    master = Master(config)
    await master.start()
    first_token(master, config, advertise)
    code = await until_terminated(master.supervisor)
    await master.stop()
    return code


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_process_name("kubeling-master")
    setup_logging(args.log_level)
    config = MasterConfig(
        bootstrap_tokens=args.bootstrap_tokens,
        metrics_bind=args.metrics_bind_address,
        loop_crash_limit=args.loop_crash_limit,
        max_requests_inflight=args.max_requests_inflight,
        max_watches_per_client=args.max_watches_per_client,
        listen=args.listen,
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
