"""`kubeling-dns`: the cluster DNS server (Kubernetes' DNS spec; records.py).

It reads Services and EndpointSlices from the master, as kube-proxy does, with
the identity of a client config file (--config, client/config.py: a credential
allowed to list and watch Services and EndpointSlices), or in plaintext to a
master on this machine (--master with --insecure: tests, development). Names
outside the cluster domain go to --upstream (default: the non-loopback
nameservers of --resolv-conf; none: such names are REFUSED).

/healthz, /livez, /readyz (caches filled) and /metrics on --health-bind-address.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import structlog
from aiohttp import web

from kubeling.client import Client
from kubeling.client.bootstrap import is_local_target
from kubeling.client.config import ConfigError
from kubeling.common import httpserve
from kubeling.common.lifecycle import until_terminated
from kubeling.common.logging import setup_logging
from kubeling.common.proctitle import set_process_name
from kubeling.dns.clusterdns import ClusterDns
from kubeling.dns.records import DEFAULT_DOMAIN, DEFAULT_TTL
from kubeling.dns.server import (
    DEFAULT_PORT,
    DnsConfig,
    parse_upstreams,
    resolv_conf_upstreams,
)

log = structlog.get_logger(__name__)

PROG = "kubeling-dns"
HEALTH_PORT = 9153  # CoreDNS' metrics port


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--listen", default=f"0.0.0.0:{DEFAULT_PORT}", help="UDP and TCP, HOST:PORT")
    p.add_argument("--cluster-domain", default=DEFAULT_DOMAIN)
    p.add_argument("--ttl", type=int, default=DEFAULT_TTL, help="seconds, of positive answers")
    p.add_argument(
        "--upstream",
        default=None,
        metavar="IP[:PORT],...",
        help="resolvers for other names (default: the nameservers of --resolv-conf that "
        "are not loopback); an empty value: none",
    )
    p.add_argument("--resolv-conf", default="/etc/resolv.conf")
    p.add_argument("--forward-timeout", type=float, default=2.0, help="seconds per upstream")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="client config file (server and credentials) to reach the master",
    )
    p.add_argument(
        "--master",
        default=os.environ.get("KUBELING_SERVER", "localhost:6443"),
        metavar="HOST:PORT[,HOST:PORT...]",
        help="with --insecure: the master on this machine",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext to a master on loopback or a unix socket (no --config)",
    )
    p.add_argument(
        "--health-bind-address",
        default=f"0.0.0.0:{HEALTH_PORT}",
        help="/healthz, /livez, /readyz and /metrics",
    )
    p.add_argument("--log-level", default=os.environ.get("KUBELING_LOG_LEVEL", "info"))
    args = p.parse_args(argv)
    if args.insecure:
        if args.config is not None:
            p.error("--insecure and --config exclude each other")
        if not is_local_target(args.master):
            p.error(
                "--insecure talks plaintext, so only to a master on this machine "
                f"(loopback or unix:PATH), not {args.master}"
            )
    elif args.config is None:
        p.error(
            "give --config PATH (a credential that may list and watch Services and "
            "EndpointSlices), or --insecure with --master for a master on this machine"
        )
    try:
        args.upstreams = (
            resolv_conf_upstreams(args.resolv_conf)
            if args.upstream is None
            else parse_upstreams(args.upstream)
        )
    except ValueError as exc:
        p.error(f"--upstream {args.upstream!r}: {exc}")
    return args


def health_app(dns: ClusterDns) -> web.Application:
    app = httpserve.make_app(dns.healthy)

    async def readyz(request: web.Request) -> web.Response:
        ok = dns.healthy() and dns.ready()
        return web.Response(status=200 if ok else 503, text="ok" if ok else "caches not synced")

    app.router.add_get("/readyz", readyz)
    return app


async def serve(dns: ClusterDns, health_bind: str) -> int:
    """Run until SIGTERM/SIGINT (0) or until a watch gives up (1)."""
    runner = await httpserve.serve(health_app(dns), health_bind, HEALTH_PORT)
    try:
        port = await dns.start()
        log.info("kubeling-dns running", port=port, domain=dns.index.domain)
        code = await until_terminated(dns.supervisor)
        await dns.stop()
        return code
    finally:
        await runner.cleanup()


async def run(args: argparse.Namespace) -> int:
    try:
        api = Client(args.master) if args.insecure else Client.from_config(args.config)
    except ConfigError as exc:
        raise SystemExit(f"{PROG}: {exc}") from None
    if not args.upstreams:
        log.warning("no upstream resolver: names outside the cluster domain are refused")
    config = DnsConfig(
        listen=args.listen, upstreams=args.upstreams, forward_timeout=args.forward_timeout
    )
    try:
        dns = ClusterDns(api, config, args.cluster_domain, args.ttl)
        return await serve(dns, args.health_bind_address)
    finally:
        await api.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_process_name(PROG)
    setup_logging(args.log_level)
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
