"""`kubeling-proxy`: programs nftables so that services reach their ready pods.

Secure by default: the proxy talks to the master with its own certificate
(`CN=system:kube-proxy:NODE, O=system:node-proxiers`, which may read Services,
EndpointSlices and its Node) from --cert-dir, and serves its API (Status,
Explain) over TLS with it, to admin, edit and view users. Without a certificate
it joins as the kubelet does (client/bootstrap.py: --token-file or
KUBELING_TOKEN, --discovery-token-ca-cert-hash), and renews it before it
expires. --insecure is plaintext both ways, for a master on this machine only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import structlog

from kubeling.client.bootstrap import (
    ROLE_PROXY,
    add_node_flags,
    connect,
    finish_node_args,
)
from kubeling.client.bootstrap import (
    CertificateRenewer as Renewer,
)
from kubeling.common import machine
from kubeling.common.lifecycle import until_terminated
from kubeling.common.logging import setup_logging
from kubeling.common.proctitle import set_process_name
from kubeling.common.tls import CredentialDir
from kubeling.proxy import health, server
from kubeling.proxy.conntrack import ConntrackTool
from kubeling.proxy.kubeproxy import KubeProxy, ProxyConfig
from kubeling.proxy.nft import LibNftables

log = structlog.get_logger(__name__)

PROG = "kubeling-proxy"
CERT_NAME = "proxy"  # DIR/proxy.crt, DIR/proxy.key, DIR/ca.crt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--node-name", default=machine.hostname())
    p.add_argument(
        "--node-ip",
        default="",
        help="the node's address, put in the proxy's serving certificate (default: detected)",
    )
    add_node_flags(p, "proxy")
    p.add_argument(
        "--cluster-cidr",
        default="",
        help="the pod network; traffic to a ClusterIP from outside it is masqueraded "
        "(default: the node's podCIDR)",
    )
    p.add_argument("--min-sync-interval", type=float, default=1.0, help="seconds")
    p.add_argument("--sync-period", type=float, default=30.0, help="full resync, seconds")
    p.add_argument(
        "--listen",
        default=None,
        help=f"the Proxy gRPC API: default 0.0.0.0:{server.DEFAULT_PORT}, with --insecure "
        f"127.0.0.1:{server.DEFAULT_PORT}",
    )
    p.add_argument(
        "--healthz-bind-address",
        default=f"0.0.0.0:{health.DEFAULT_PORT}",
        help="/healthz, /livez and /metrics",
    )
    p.add_argument(
        "--cleanup", action="store_true", help="remove the proxy's nftables table and exit"
    )
    p.add_argument("--log-level", default=os.environ.get("KUBELING_LOG_LEVEL", "info"))
    return finish_node_args(
        p,
        p.parse_args(argv),
        f"0.0.0.0:{server.DEFAULT_PORT}",
        f"127.0.0.1:{server.DEFAULT_PORT}",
    )


async def run(args: argparse.Namespace) -> int:
    backend = LibNftables()
    config = ProxyConfig(
        node_name=args.node_name,
        cluster_cidr=args.cluster_cidr,
        min_sync_interval=args.min_sync_interval,
        sync_period=args.sync_period,
    )
    cred_dir = None if args.insecure else CredentialDir(args.cert_dir, CERT_NAME)
    addresses = [] if args.insecure else [args.node_ip or machine.node_ip()]
    api, renewer = await connect(
        args, PROG, cred_dir, ROLE_PROXY, args.node_name, [a for a in addresses if a]
    )
    try:
        proxy = KubeProxy(config, api, backend, ConntrackTool())
        return await serve(proxy, args.healthz_bind_address, args.listen, cred_dir, renewer)
    finally:
        await api.close()


async def serve(
    proxy: KubeProxy,
    healthz_bind: str,
    listen: str,
    credentials: CredentialDir | None = None,
    renewer: Renewer | None = None,
) -> int:
    """Run `proxy` with its HTTP and gRPC endpoints until SIGTERM/SIGINT (0) or until
    one of its supervised loops gives up (1: systemd or the lab restarts us). The
    gRPC API serves TLS from `credentials` (plaintext, loopback only, without);
    `renewer` keeps them valid, as one more supervised loop."""
    runner = await health.serve_health(proxy, healthz_bind)
    grpc_server = await server.serve_proxy_api(listen, proxy, credentials)
    health.follow_supervisor(proxy, grpc_server)
    await proxy.start()
    if renewer is not None:
        proxy.supervisor.start("certificate-renewal", renewer.run)
    log.info("kube-proxy running", node=proxy.config.node_name, listen=listen)
    code = await until_terminated(proxy.supervisor)
    await proxy.stop()
    await grpc_server.stop(0.5)
    await runner.cleanup()
    return code


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_process_name(PROG)
    setup_logging(args.log_level)
    if args.cleanup:
        LibNftables().delete_table()
        return
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
