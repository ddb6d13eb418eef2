"""`kubeling-proxy`: programs nftables so that services reach their ready pods."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import structlog

from kubeling.client import Client
from kubeling.common import machine
from kubeling.common.lifecycle import until_terminated
from kubeling.common.logging import setup_logging
from kubeling.common.proctitle import set_process_name
from kubeling.proxy import health, server
from kubeling.proxy.conntrack import ConntrackTool
from kubeling.proxy.kubeproxy import KubeProxy, ProxyConfig
from kubeling.proxy.nft import LibNftables

log = structlog.get_logger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kubeling-proxy", description=__doc__)
    p.add_argument("--master", default=os.environ.get("KUBELING_SERVER", "localhost:6443"))
    p.add_argument("--node-name", default=machine.hostname())
    p.add_argument(
        "--cluster-cidr",
        default="",
        help="the pod network; traffic to a ClusterIP from outside it is masqueraded "
        "(default: the node's podCIDR)",
    )
    p.add_argument("--min-sync-interval", type=float, default=1.0, help="seconds")
    p.add_argument("--sync-period", type=float, default=30.0, help="full resync, seconds")
    p.add_argument("--listen", default=f"0.0.0.0:{server.DEFAULT_PORT}", help="the Proxy gRPC API")
    p.add_argument(
        "--healthz-bind-address",
        default=f"0.0.0.0:{health.DEFAULT_PORT}",
        help="/healthz, /livez and /metrics",
    )
    p.add_argument(
        "--cleanup", action="store_true", help="remove the proxy's nftables table and exit"
    )
    p.add_argument("--log-level", default=os.environ.get("KUBELING_LOG_LEVEL", "info"))
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    backend = LibNftables()
    config = ProxyConfig(
        node_name=args.node_name,
        cluster_cidr=args.cluster_cidr,
        min_sync_interval=args.min_sync_interval,
        sync_period=args.sync_period,
    )
    api = Client(args.master)
    try:
        proxy = KubeProxy(config, api, backend, ConntrackTool())
        return await serve(proxy, args.healthz_bind_address, args.listen)
    finally:
        await api.close()


async def serve(proxy: KubeProxy, healthz_bind: str, listen: str) -> int:
    """Run `proxy` with its HTTP and gRPC endpoints until SIGTERM/SIGINT (0) or until
    one of its supervised loops gives up (1: systemd or the lab restarts us)."""
    runner = await health.serve_health(proxy, healthz_bind)
    grpc_server = await server.serve_proxy_api(listen, proxy)
    health.follow_supervisor(proxy, grpc_server)
    await proxy.start()
    log.info("kube-proxy running", node=proxy.config.node_name, listen=listen)
    code = await until_terminated(proxy.supervisor)
    await proxy.stop()
    await grpc_server.stop(0.5)
    await runner.cleanup()
    return code


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_process_name("kubeling-proxy")
    setup_logging(args.log_level)
    if args.cleanup:
        LibNftables().delete_table()
        return
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
