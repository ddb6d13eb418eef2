"""End to end on a 3-worker lab: real master, and per node a real containerd, kubelet
and kube-proxy in the node's own network namespace (kubeling.lab). Traffic stays in
the lab's namespaces, which have no route off the machine."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from kubeling.client import Client
from kubeling.client.pods import pod_exec
from kubeling.lab.lab import Lab, LabOptions, running_lab
from kubeling.v1 import apps_pb2, core_pb2
from tests.support import waiting
from tests.support.containerd import skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))

NS = "default"
GRACE = 8  # seconds without a Lease renewal before a node is Unknown

eventually = functools.partial(waiting.eventually, within=120.0, interval=0.5)

WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 6
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: web
          image: busybox
          command: ["sh", "-c"]
          args: ["mkdir -p /www && hostname > /www/index.html && httpd -f -p 8080 -h /www"]
          ports: [{name: http, containerPort: 8080}]
          readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
          resources: {requests: {cpu: 10m, memory: 8Mi}}
"""

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30080}]
"""

AGENT = """
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: default}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - {name: agent, image: busybox, command: ["sleep", "100000"]}
"""

# A client run inside a namespace: N HTTP GETs, the answers counted.
FETCH = """
import collections, json, sys, urllib.request
url, count = sys.argv[1], int(sys.argv[2])
answers = collections.Counter()
for _ in range(count):
    try:
        answers[urllib.request.urlopen(url, timeout=3).read().decode().strip()] += 1
    except OSError as exc:
        answers["error: " + type(exc).__name__] += 1
print(json.dumps(answers))
"""


def parse(text: str, message: Any) -> Any:
    return json_format.ParseDict(yaml.safe_load(text), message)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    # A short folder: unix socket paths are limited to 108 bytes.
    base = Path(f"/tmp/kltest-{secrets.token_hex(3)}")
    options = LabOptions(
        nodes=3,
        prefix=f"klt{secrets.token_hex(2)}-",
        master_args=[
            "--node-monitor-grace-period", str(GRACE),
            "--pod-eviction-timeout", "2",
        ],
        kubelet_args=[
            "--lease-duration", str(GRACE),
            "--lease-renew-interval", "1",
            "--status-interval", "2",
        ],
        proxy_args=["--min-sync-interval", "0.2"],
    )  # fmt: skip
    with running_lab(base, options) as running:
        yield running


@pytest.fixture
async def api(lab: Lab) -> AsyncIterator[Client]:
    async with lab.client(timeout=20) as client:
        yield client


async def snapshot(api: Client) -> str:
    """Pods, nodes and recent events, for a failure message."""
    lines = ["", "pods:"]
    for pod in (await api.pods.list(NS)).items:
        lines.append(
            f"  {pod.metadata.name} node={pod.spec.node_name} phase={pod.status.phase} "
            f"ip={pod.status.pod_ip} deleting={pod.metadata.HasField('deletion_timestamp')} "
            f"ready={ready(pod)}"
        )
    lines.append("nodes:")
    for node in (await api.nodes.list()).items:
        conditions = {c.type: c.status for c in node.status.conditions}
        taints = [t.key for t in node.spec.taints]
        lines.append(f"  {node.metadata.name} {conditions} taints={taints}")
    lines.append("events:")
    for event in (await api.events.list(NS)).items[-30:]:
        lines.append(f"  {event.involved_object.name}: {event.reason} {event.message}")
    return "\n".join(lines)


def ready(pod: core_pb2.Pod) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions
    )


async def pods(api: Client, app: str) -> list[core_pb2.Pod]:
    listed = await api.pods.list(NS, label_selector=f"app={app}")
    return [p for p in listed.items if not p.metadata.HasField("deletion_timestamp")]


def fetch(lab: Lab, where: str, url: str, count: int) -> Counter[str]:
    done = subprocess.run(
        lab.exec_command(where, [sys.executable, "-c", FETCH, url, str(count)]),
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return Counter(json.loads(done.stdout))


async def test_nodes_join_with_their_own_pod_cidrs(lab: Lab, api: Client) -> None:
    async def all_ready() -> bool:
        nodes = (await api.nodes.list()).items
        return len(nodes) == 3 and all(
            any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
            for n in nodes
        )

    await eventually(all_ready)
    nodes = (await api.nodes.list()).items
    assert sorted(n.metadata.name for n in nodes) == ["worker-1", "worker-2", "worker-3"]
    cidrs = {n.spec.pod_cidr for n in nodes}
    assert len(cidrs) == 3 and all(c.startswith("10.244.") for c in cidrs)


async def test_deployment_spreads_and_pods_reach_pods_on_other_nodes(lab: Lab, api: Client) -> None:
    await api.deployments.create(parse(WEB, apps_pb2.Deployment()))
    await api.services.create(parse(SERVICE, core_pb2.Service()))

    async def all_ready() -> bool:
        found = await pods(api, "web")
        return len(found) == 6 and all(ready(p) for p in found)

    await eventually(all_ready, within=180)
    found = await pods(api, "web")
    assert Counter(p.spec.node_name for p in found) == {
        "worker-1": 2, "worker-2": 2, "worker-3": 2,
    }  # fmt: skip
    # Every pod is in its node's pod CIDR.
    cidrs = {n.metadata.name: n.spec.pod_cidr for n in (await api.nodes.list()).items}
    for pod in found:
        prefix = cidrs[pod.spec.node_name].rsplit(".", 1)[0]
        assert pod.status.pod_ip.startswith(prefix + "."), (pod.status.pod_ip, cidrs)
    # A pod reaches a pod on another node by IP.
    client = found[0]
    other = next(p for p in found if p.spec.node_name != client.spec.node_name)
    reply = await pod_exec(
        api, client.metadata.name, ["wget", "-qO-", f"http://{other.status.pod_ip}:8080/"], NS
    )
    assert reply.exit_code == 0, reply
    assert reply.stdout.strip() == other.metadata.name


async def test_cluster_ip_answers_from_every_node_and_balances_over_all_nodes(
    lab: Lab, api: Client
) -> None:
    service = await api.services.get("web", NS)
    pod_node = {p.metadata.name: p.spec.node_name for p in await pods(api, "web")}
    url = f"http://{service.spec.cluster_ip}/"
    for node in ("worker-1", "worker-2", "worker-3"):
        answers = await asyncio.to_thread(fetch, lab, node, url, 40)
        assert set(answers) <= set(pod_node), answers  # no errors, only our pods
        assert {pod_node[name] for name in answers} == {"worker-1", "worker-2", "worker-3"}


async def test_cli_explains_a_lab_nodes_proxy(lab: Lab, api: Client) -> None:
    service = await api.services.get("web", NS)
    pod_ips = {p.status.pod_ip for p in await pods(api, "web")}
    done = await asyncio.to_thread(
        subprocess.run,
        [
            # The lab's admin config names its master's socket and the credential.
            sys.executable, "-m", "kubeling.cli.main",
            "proxy", "explain", "worker-2", f"{service.spec.cluster_ip}:80",
        ],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "KUBELING_LAB_DIR": str(lab.dir),
             "KUBELING_CONFIG": str(lab.config_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ClusterIP of service default/web:http" in done.stdout
    assert {ip for ip in pod_ips if f"{ip}:8080" in done.stdout} == pod_ips


async def test_node_port_answers_on_every_node(lab: Lab, api: Client) -> None:
    pod_names = {p.metadata.name for p in await pods(api, "web")}
    assert lab.state is not None
    for node in lab.state.nodes:
        # From the lab network, outside every node.
        answers = await asyncio.to_thread(fetch, lab, "master", f"http://{node.ip}:30080/", 10)
        assert set(answers) <= pod_names and sum(answers.values()) == 10, answers


async def test_daemonset_runs_one_pod_per_node(lab: Lab, api: Client) -> None:
    await api.daemon_sets.create(parse(AGENT, apps_pb2.DaemonSet()))

    async def one_each() -> bool:
        found = await pods(api, "agent")
        return sorted(p.spec.node_name for p in found if ready(p)) == [
            "worker-1", "worker-2", "worker-3",
        ]  # fmt: skip

    await eventually(one_each, within=180)


async def test_lost_node_is_replaced_then_cleaned_up_and_used_again(lab: Lab, api: Client) -> None:
    lost = "worker-3"
    await asyncio.to_thread(lab.stop_node, lost)

    async def not_ready() -> bool:
        node = await api.nodes.get(lost)
        return any(c.type == "Ready" and c.status != "True" for c in node.status.conditions)

    await eventually(not_ready, within=GRACE * 4)

    async def replaced() -> bool:
        found = [p for p in await pods(api, "web") if ready(p)]
        return len(found) == 6 and all(p.spec.node_name != lost for p in found)

    await eventually(replaced, within=180, describe=lambda: snapshot(api))

    await asyncio.to_thread(lab.start_node, lost)

    async def back() -> bool:
        node = await api.nodes.get(lost)
        bound = (await api.pods.list(NS, field_selector=f"spec.nodeName={lost}")).items
        web_left = [p for p in bound if p.metadata.labels.get("app") == "web"]
        return (
            any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
            and not node.spec.taints  # the node lifecycle controller lifted them
            and not web_left  # its stale web pods were cleaned up
        )

    await eventually(back, within=180, describe=lambda: snapshot(api))
    # It takes new pods: scale up, the emptiest node gets them.
    deployment = await api.deployments.get("web", NS)
    deployment.spec.replicas = 9
    await api.deployments.update(deployment)

    async def scheduled_there() -> bool:
        found = [p for p in await pods(api, "web") if ready(p)]
        return len(found) == 9 and any(p.spec.node_name == lost for p in found)

    await eventually(scheduled_there, within=180, describe=lambda: snapshot(api))


def test_no_secret_on_a_command_line_or_in_a_log(lab: Lab) -> None:
    """The lab's master, kubelets and proxies joined with a token and hold keys:
    neither shows in `ps` nor in any log, and the files holding them are 0600."""
    token = lab.token_file("worker-1").read_text().strip()
    secret = token.partition(".")[2]
    assert len(secret) == 16
    ps = subprocess.run(
        ["ps", "-e", "-ww", "-o", "args="], capture_output=True, text=True, check=True
    ).stdout
    # The lab's processes are there (so this looks at the right thing) ...
    for node in ("worker-1", "worker-2", "worker-3"):
        assert f"--node-name {node} --join-address" in ps
        assert f"--token-file {lab.token_file(node)}" in ps
    # ... without the token, its secret, or any key material.
    assert secret not in ps
    assert "PRIVATE KEY" not in ps and "BEGIN CERTIFICATE" not in ps
    logs = sorted(lab.logs.glob("*.log"))
    assert {"master.log", "worker-1-kubelet.log", "worker-1-proxy.log"} <= {p.name for p in logs}
    for log in logs:
        text = log.read_text(errors="replace")
        assert secret not in text, f"{log} holds the bootstrap token's secret"
        assert "PRIVATE KEY" not in text, f"{log} holds a private key"
    secrets_at_rest = [
        lab.pki_dir / "ca.key",
        lab.pki_dir / "admin.key",
        lab.config_path,
        *(lab.token_file(n) for n in ("worker-1", "worker-2", "worker-3")),
        *lab.node_dir("worker-1").glob("*-pki/*.key"),
    ]
    assert len(secrets_at_rest) >= 8  # the kubelet's and the proxy's keys among them
    for path in secrets_at_rest:
        assert path.stat().st_mode & 0o777 == 0o600, path


PULLED = """
apiVersion: v1
kind: Pod
metadata: {name: pulled, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - {name: main, image: busybox, command: ["sleep", "100000"]}
"""


async def test_busybox_is_pulled_from_the_lab_registry_with_no_failed_pull(
    lab: Lab, api: Client
) -> None:
    """`image: busybox` (pull policy Always) is pulled through CRI from the lab's
    docker-registry, the nodes' docker.io mirror: busybox is not imported on nodes."""
    from kubeling.node.images import BUSYBOX_IMAGE, containerd_images, read_archive_names

    await api.pods.create(parse(PULLED, core_pb2.Pod()))

    async def running() -> bool:
        return ready(await api.pods.get("pulled", NS))

    await eventually(running, within=120)
    pod = await api.pods.get("pulled", NS)
    events = (await api.events.list("")).items
    pulled = [e for e in events if e.involved_object.name == "pulled" and e.reason == "Pulled"]
    assert pulled and "Successfully pulled" in pulled[0].message, await snapshot(api)
    failed = [
        f"{e.involved_object.name}: {e.reason} {e.message}"
        for e in events
        if e.reason in ("Failed", "ErrImagePull", "ImagePullBackOff")
        or "failed to pull" in e.message.lower()
    ]
    assert not failed, failed
    # The node has the registry's copy, the very manifest the lab built.
    built = read_archive_names(lab.dir / "images" / "busybox.tar")[BUSYBOX_IMAGE]
    socket = lab.node_dir(pod.spec.node_name) / "containerd.sock"
    assert containerd_images(str(socket))[BUSYBOX_IMAGE] == built
    assert not (lab.sandbox_images / "busybox.tar").exists()
    assert next(row for row in lab.status() if row[0] == "registry")[4] == "up"
    await api.pods.delete("pulled", NS)
