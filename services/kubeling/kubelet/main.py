"""`kubeling-kubelet`: the node agent that runs pods through CRI.

Secure by default: the kubelet talks to the master with its node certificate
(`CN=system:node:NAME, O=system:nodes`) from --cert-dir, and serves its own API
over TLS with the same certificate, to the master only. A node without a
certificate joins first (client/bootstrap.py): it checks the CA on the master's
join port against --discovery-token-ca-cert-hash, then sends its bootstrap token
(--token-file or KUBELING_TOKEN, never argv) and a CSR. The certificate is
renewed before it expires, without a restart. --insecure is plaintext both ways,
for a master on this machine only.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import sys
from pathlib import Path

import structlog

from kubeling.client.bootstrap import (
    ROLE_NODE,
    add_node_flags,
    connect,
    default_cert_dir,
    finish_node_args,
    token_from,
)
from kubeling.common import machine
from kubeling.common.httpserve import serve_http
from kubeling.common.lifecycle import until_terminated
from kubeling.common.logging import setup_logging
from kubeling.common.proctitle import set_process_name
from kubeling.common.tls import CredentialDir
from kubeling.cri.client import RuntimeClient
from kubeling.kubelet import metrics
from kubeling.kubelet.dns import DNSSettings
from kubeling.kubelet.kubelet import Kubelet, KubeletConfig

log = structlog.get_logger(__name__)

PROG = "kubeling-kubelet"
CERT_NAME = "kubelet"  # DIR/kubelet.crt, DIR/kubelet.key, DIR/ca.crt


def join_token(args: argparse.Namespace) -> str:
    """The bootstrap token from --token-file or KUBELING_TOKEN ("" when neither)."""
    return token_from(args, PROG)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("--node-name", default=machine.hostname())
    add_node_flags(p, "kubelet")
    p.add_argument("--runtime-endpoint", default="unix:///run/containerd/containerd.sock")
    p.add_argument(
        "--listen",
        default=None,
        help="the kubelet API (logs, exec): default 0.0.0.0:10250, with --insecure 127.0.0.1:10250",
    )
    p.add_argument(
        "--healthz-bind-address",
        default="127.0.0.1:10248",
        help="HTTP /metrics, /healthz and /livez (Kubernetes' kubelet healthz port)",
    )
    p.add_argument("--node-ip", default="", help="the node's InternalIP (default: detected)")
    p.add_argument(
        "--pod-cidr",
        default="",
        help="pod CIDR for the CNI config while the master assigns none (set on the Node "
        "only with --insecure: with TLS the master's IPAM alone sets spec.podCIDR)",
    )
    p.add_argument(
        "--cni-conf-dir",
        default="",
        help="write this node's bridge CNI config here once the pod CIDR is known",
    )
    p.add_argument(
        "--cni-ipam-dir",
        default="",
        help="where host-local IPAM keeps this node's address leases (default: its own, "
        "/var/lib/cni/networks); nodes sharing one filesystem, as in the lab, need one each",
    )
    p.add_argument("--cluster-cidr", default="10.244.0.0/16", help="all nodes' pod CIDRs")
    p.add_argument(
        "--service-cidr", default="10.96.0.0/12", help="ClusterIPs, routed from pods via the node"
    )
    p.add_argument(
        "--sync-pod-routes",
        action="store_true",
        help="add a route to every other node's pod CIDR via its InternalIP (nodes on one "
        "network, as kubenet/host-gw)",
    )
    p.add_argument(
        "--cluster-dns",
        default="",
        help="IP[,IP]: the cluster DNS pods with dnsPolicy ClusterFirst use (default: "
        "none, such pods get the node's resolver)",
    )
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument(
        "--resolv-conf",
        default="/etc/resolv.conf",
        help='the node\'s resolver config pods with dnsPolicy Default get ("": none)',
    )
    p.add_argument(
        "--root-dir",
        type=Path,
        default=default_cert_dir("kubelet").parent,
        help="per-pod state (volumes) under ROOT/pods/UID",
    )
    p.add_argument(
        "--local-path-dir",
        type=Path,
        default=None,
        help="where this node keeps local-path volumes (default ROOT/storage); announced "
        "on its Node for the local-path provisioner",
    )
    p.add_argument("--image-dir", default="", help="import the image tarballs found here")
    p.add_argument("--pod-log-dir", type=Path, default=Path("/var/log/pods"))
    p.add_argument("--relist-period", type=float, default=1.0)
    p.add_argument("--status-interval", type=float, default=10.0)
    p.add_argument("--lease-duration", type=int, default=40)
    p.add_argument("--lease-renew-interval", type=float, default=10.0)
    p.add_argument("--backoff-initial", type=float, default=10.0)
    p.add_argument("--backoff-max", type=float, default=300.0)
    p.add_argument("--backoff-reset", type=float, default=600.0)
    p.add_argument("--log-level", default=os.environ.get("KUBELING_LOG_LEVEL", "info"))
    return finish_node_args(p, p.parse_args(argv), "0.0.0.0:10250", "127.0.0.1:10250")


def config_from(args: argparse.Namespace) -> KubeletConfig:
    return KubeletConfig(
        credentials=None if args.insecure else CredentialDir(args.cert_dir, CERT_NAME),
        master=args.master,
        node_name=args.node_name,
        runtime_endpoint=args.runtime_endpoint,
        listen=args.listen,
        node_ip=args.node_ip or machine.node_ip(),
        pod_cidr=args.pod_cidr,
        pod_log_dir=args.pod_log_dir,
        cni_conf_dir=Path(args.cni_conf_dir) if args.cni_conf_dir else None,
        cni_ipam_dir=Path(args.cni_ipam_dir) if args.cni_ipam_dir else None,
        cluster_cidr=args.cluster_cidr,
        sync_pod_routes=args.sync_pod_routes,
        service_cidr=args.service_cidr,
        relist_period=args.relist_period,
        status_interval=args.status_interval,
        lease_duration=args.lease_duration,
        lease_renew_interval=args.lease_renew_interval,
        backoff_initial=args.backoff_initial,
        backoff_max=args.backoff_max,
        backoff_reset=args.backoff_reset,
        dns=dns_settings(args),
        root_dir=args.root_dir,
        local_path_dir=args.local_path_dir,
    )


def dns_settings(args: argparse.Namespace) -> DNSSettings:
    servers = [s.strip() for s in args.cluster_dns.split(",") if s.strip()]
    for server in servers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise SystemExit(f"{PROG}: --cluster-dns: {server!r} is not an IP address") from None
    return DNSSettings(
        cluster_dns=servers,
        cluster_domain=args.cluster_domain.strip("."),
        resolv_conf=Path(args.resolv_conf) if args.resolv_conf else None,
    )


def healthy(kubelet: Kubelet) -> bool:
    """/healthz: no supervised loop gave up, the relist loop goes round (PLEG) and
    the runtime answers CRI calls."""
    if kubelet.supervisor.failed.is_set() or not kubelet.relist_active():
        return False
    return kubelet.agent is None or kubelet.agent.runtime_reachable


async def run(args: argparse.Namespace) -> int:
    join_token(args)  # a bad token file fails before anything starts
    config = config_from(args)
    if args.image_dir:
        from kubeling.node.images import import_images

        address = config.runtime_endpoint.removeprefix("unix://")
        await asyncio.to_thread(import_images, Path(args.image_dir), address)
    runtime = RuntimeClient(config.runtime_endpoint, observe=metrics.observe_runtime_operation)
    addresses = [config.node_ip] if config.node_ip else []
    api, renewer = await connect(
        args, PROG, config.credentials, ROLE_NODE, config.node_name, addresses
    )
    kubelet = Kubelet(config, runtime, api, renewer=renewer)
    # Up before registering, so a kubelet waiting for its master can be watched.
    http = await serve_http(args.healthz_bind_address, 10248, lambda: healthy(kubelet))
    await kubelet.start()
    code = await until_terminated(kubelet.supervisor)
    await kubelet.stop()
    await http.cleanup()
    await api.close()
    await runtime.close()
    return code


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_process_name(PROG)
    setup_logging(args.log_level)
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
