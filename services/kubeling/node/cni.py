"""The node's CNI configuration: a Linux bridge with host-local IPAM, plus portmap.

Every node owns one pod CIDR (e.g. 10.244.1.0/24). Pods attach to a bridge in the
node's network namespace whose address is the first host of that CIDR and is the
pods' gateway. Pods on other nodes and service IPs are reached through that gateway
(the `routes` given here); the node's own routes and kube-proxy's rules do the rest.

No masquerading (``ipMasq: false``): the Kubernetes network model wants pod-to-pod
traffic without NAT, so a pod on node B sees the real source IP of a pod on node A,
and pods are not meant to reach anything outside the cluster, which masquerading
would enable. Note that the bridge plugin's ``isGateway`` turns on IPv4 forwarding
in the namespace it runs in; that is why a node belongs in its own namespace.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CNI_VERSION = "0.4.0"  # the newest version both containerd 1.6 and plugins 1.1 speak
CONFLIST_NAME = "10-kubeling.conflist"


def pod_cidr_gateway(cidr: str) -> str:
    """The gateway (bridge) address of a pod CIDR: its first host address."""
    network = ipaddress.ip_network(cidr, strict=True)
    if network.num_addresses < 4:
        raise ValueError(f"pod CIDR {cidr} is too small for a gateway and pods")
    return str(network.network_address + 1)


def bridge_cni_config(
    *,
    pod_cidr: str,
    bridge: str = "kubeling0",
    network_name: str = "kubeling",
    mtu: int = 1500,
    routes: Sequence[str] = (),
    ipam_data_dir: str | None = None,
) -> dict[str, Any]:
    """The conflist as a JSON object; see :func:`write_bridge_cni_config`."""
    network = ipaddress.ip_network(pod_cidr, strict=True)
    if network.version != 4:
        raise ValueError("only IPv4 pod CIDRs are supported")
    if not 1 <= len(bridge) <= 15:
        raise ValueError(f"bridge name {bridge!r} must be 1-15 characters (IFNAMSIZ)")
    gateway = pod_cidr_gateway(pod_cidr)
    dsts: list[str] = []
    for route in routes:
        dst = ipaddress.ip_network(route, strict=True)
        # The pod's own subnet is already on-link; a via-gateway route for it would
        # clash with the kernel's connected route and fail the CNI ADD.
        if dst != network and str(dst) not in dsts:
            dsts.append(str(dst))

    ipam: dict[str, Any] = {
        "type": "host-local",
        "ranges": [[{"subnet": str(network), "gateway": gateway}]],
        "routes": [{"dst": dst, "gw": gateway} for dst in dsts],
    }
    if ipam_data_dir is not None:
        # host-local keys its leases by network name under /var/lib/cni/networks by
        # default; several nodes on one machine each need their own folder.
        ipam["dataDir"] = ipam_data_dir
    return {
        "cniVersion": CNI_VERSION,
        "name": network_name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                # A pod reaching itself through its service IP needs the packet to
                # come back out of the port it went in.
                "hairpinMode": True,
                "mtu": mtu,
                "ipam": ipam,
            },
            # hostPort: containerd passes the pod's port mappings as runtimeConfig.
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def write_bridge_cni_config(
    conf_dir: Path | str,
    *,
    pod_cidr: str,
    bridge: str = "kubeling0",
    network_name: str = "kubeling",
    mtu: int = 1500,
    routes: Sequence[str] = (),
    ipam_data_dir: str | None = None,
) -> Path:
    """Write the node's conflist into `conf_dir` (containerd's CNI ``conf_dir``).

    `routes` are destinations sent to the gateway from inside pods: pass the cluster
    pod CIDR and the service CIDR. There is deliberately no default route, so pods
    have no path off the cluster. `ipam_data_dir` separates host-local's lease files
    when several nodes share a machine.
    """
    conf_dir = Path(conf_dir)
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / CONFLIST_NAME
    config = bridge_cni_config(
        pod_cidr=pod_cidr,
        bridge=bridge,
        network_name=network_name,
        mtu=mtu,
        routes=routes,
        ipam_data_dir=ipam_data_dir,
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    # containerd watches conf_dir; rename so it never loads a half-written file.
    tmp.replace(path)
    return path
