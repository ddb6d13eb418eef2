"""The lab's cluster add-ons, installed as pods the way kubeadm installs them.

The manifests are the files in `deploy/addons/` (the single source: an operator
applies the same ones with `kubeling apply -f`); this module makes what they need
from the operator (deploy/README.md, "Add-ons"), applies them through the API as
`kubeling apply -f` does, and waits until they serve:

- DNS (`dns.yaml`): a `dns`-role credential for user `kube-dns` (key made here,
  only a CSR goes to the master, as `kubeling user add kube-dns --role dns`),
  written as a client config naming the masters by their lab addresses (pods
  reach them there) into Secret `kube-dns-credentials`; ConfigMap `kube-dns` with
  no upstream (nothing in the lab has a route off the machine).
- kube-proxy (`kube-proxy.yaml`, `lab up --proxy=pod`): a bootstrap token that
  does not expire (a pod made later, on a restarted node, joins with it too) in
  Secret `kube-proxy-bootstrap`, and ConfigMap `kube-proxy` with the masters, the
  CA's pin and the cluster CIDR.

Nothing secret is logged or put on a command line: the token and the key go
straight from this process into Secrets (encrypted at rest by the master).
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from kubeling.api import kinds
from kubeling.client import Client
from kubeling.client.apply import apply_object
from kubeling.client.manifests import load_manifests
from kubeling.v1 import apps_pb2, core_pb2, meta_pb2

NAMESPACE = "kube-system"
# The kube-dns Service's ClusterIP (dns.yaml): the 10th address of the service CIDR.
CLUSTER_DNS = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
DNS_USER = "kube-dns"
DNS = "dns"
PROXY = "kube-proxy"
ADDONS_ENV = "KUBELING_ADDONS_DIR"


class AddonError(RuntimeError):
    pass


def addons_dir() -> Path:
    """deploy/addons of this checkout, or $KUBELING_ADDONS_DIR (an installed copy)."""
    if os.environ.get(ADDONS_ENV):
        return Path(os.environ[ADDONS_ENV])
    return Path(__file__).resolve().parents[3] / "deploy" / "addons"


def manifest_path(addon: str) -> Path:
    path = addons_dir() / {DNS: "dns.yaml", PROXY: "kube-proxy.yaml"}[addon]
    if not path.is_file():
        raise AddonError(f"no add-on manifest {path} (set {ADDONS_ENV} to deploy/addons)")
    return path


def manifest_images(addon: str) -> set[str]:
    """The images the add-on's manifest runs (as written: `kubeling/kubeling:0.1.0`)."""
    images: set[str] = set()
    for manifest in load_manifests([str(manifest_path(addon))], io.StringIO()):
        spec = getattr(manifest.obj, "spec", None)
        template = getattr(spec, "template", None)
        if template is not None:
            pod_spec = template.spec
            images |= {c.image for c in [*pod_spec.containers, *pod_spec.init_containers]}
    return images


async def apply_file(api: Client, path: Path) -> list[str]:
    """`kubeling apply -f PATH`: every object created or updated; what was done."""
    manifests = load_manifests([str(path)], io.StringIO())
    done = []
    for manifest in manifests:
        if manifest.kind.namespaced and not manifest.namespace:
            raise AddonError(f"{manifest.label}: an add-on's objects name their namespace")
        outcome = await apply_object(api.resource(manifest.kind), manifest.obj)
        done.append(f"{manifest.kind.name.lower()}/{manifest.name} {outcome}")
    return done


async def apply_objects(api: Client, objects: list[core_pb2.Secret | core_pb2.ConfigMap]) -> None:
    """Create or update the Secrets and ConfigMaps the manifests name."""
    for obj in objects:
        kind = kinds.SECRET if isinstance(obj, core_pb2.Secret) else kinds.CONFIG_MAP
        await apply_object(api.resource(kind), obj)


def _meta(name: str) -> meta_pb2.ObjectMeta:
    return meta_pb2.ObjectMeta(
        name=name, namespace=NAMESPACE, labels={"addonmanager.kubeling.io/lab": "true"}
    )


def dns_objects(
    client_config: str, upstream: str = ""
) -> list[core_pb2.Secret | core_pb2.ConfigMap]:
    """What dns.yaml needs: the credential's Secret and the upstream's ConfigMap."""
    return [
        core_pb2.Secret(
            metadata=_meta("kube-dns-credentials"), data={"config": client_config.encode()}
        ),
        core_pb2.ConfigMap(metadata=_meta("kube-dns"), data={"upstream": upstream}),
    ]


def proxy_objects(
    token: str, master: str, ca_pin: str, cluster_cidr: str
) -> list[core_pb2.Secret | core_pb2.ConfigMap]:
    """What kube-proxy.yaml needs: the bootstrap token's Secret and the ConfigMap."""
    return [
        core_pb2.Secret(metadata=_meta("kube-proxy-bootstrap"), data={"token": token.encode()}),
        core_pb2.ConfigMap(
            metadata=_meta("kube-proxy"),
            data={"master": master, "ca-cert-hash": ca_pin, "cluster-cidr": cluster_cidr},
        ),
    ]


@dataclass(frozen=True)
class AddonStatus:
    name: str
    kind: str  # Deployment or DaemonSet
    want: int
    ready: int
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.want > 0 and self.ready >= self.want


async def addon_status(api: Client, addon: str) -> AddonStatus:
    if addon == DNS:
        deployment: apps_pb2.Deployment = await api.deployments.get("kube-dns", NAMESPACE)
        current = deployment.status.observed_generation >= deployment.metadata.generation
        return AddonStatus(
            addon,
            "Deployment",
            deployment.spec.replicas,
            deployment.status.available_replicas if current else 0,
        )
    daemon: apps_pb2.DaemonSet = await api.daemon_sets.get("kube-proxy", NAMESPACE)
    return AddonStatus(
        addon, "DaemonSet", daemon.status.desired_number_scheduled, daemon.status.number_ready
    )


async def _pods_summary(api: Client, label: str) -> str:
    """The add-on's pods, for an error message: where, phase, why not ready."""
    pods = (await api.pods.list(NAMESPACE, label_selector=label)).items
    lines = []
    for pod in pods:
        waiting = [
            f"{c.name}: {c.state.waiting.reason} {c.state.waiting.message}".strip()
            for c in pod.status.container_statuses
            if c.state.HasField("waiting")
        ]
        lines.append(
            f"{pod.metadata.name} on {pod.spec.node_name or '(unscheduled)'}: "
            f"{pod.status.phase} {'; '.join(waiting)}".strip()
        )
    return "; ".join(lines) or "no pods"


async def wait_ready(
    api: Client, addons: list[str], nodes: int, within: float = 300.0
) -> dict[str, float]:
    """Until each add-on serves: the DNS Deployment available, a Ready kube-proxy
    pod on each of `nodes` nodes. Returns the seconds each took."""
    start = time.monotonic()
    deadline = start + within
    took: dict[str, float] = {}
    last: dict[str, AddonStatus] = {}
    while True:
        for addon in addons:
            if addon in took:
                continue
            try:
                status = await addon_status(api, addon)
            except grpc.aio.AioRpcError:
                continue
            last[addon] = status
            if status.ok and (addon != PROXY or status.want >= nodes):
                took[addon] = time.monotonic() - start
        if len(took) == len(addons):
            return took
        if time.monotonic() > deadline:
            missing = [a for a in addons if a not in took]
            details = []
            for addon in missing:
                label = "k8s-app=kube-dns" if addon == DNS else "k8s-app=kube-proxy"
                found = last.get(addon)
                seen = f"{found.ready}/{found.want} ready" if found else "not found"
                details.append(f"{addon} ({seen}): {await _pods_summary(api, label)}")
            raise AddonError(f"add-ons not ready after {within:.0f} s: {' | '.join(details)}")
        await asyncio.sleep(0.5)
