"""The cluster add-ons as pods, on a 3-worker lab: the DNS add-on (deploy/addons/
dns.yaml, the default) and kube-proxy as a DaemonSet (deploy/addons/kube-proxy.yaml,
`lab up --proxy=pod`), both running the `kubeling` image pulled from the lab's
registry. Traffic stays in the lab's namespaces, which have no route off the machine."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml

from kubeling.client import Client
from kubeling.lab import addons
from kubeling.lab.lab import Lab, LabError, LabOptions, running_lab
from kubeling.v1 import apps_pb2, core_pb2
from tests.support import waiting
from tests.support.containerd import skip_reason
from tests.support.lab_pods import (
    client_pod,
    create_once,
    nslookup,
    parse,
    ready,
    resolve,
    run_in,
)

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))

NODES = ("worker-1", "worker-2", "worker-3")
DEMO = "demo"

eventually = functools.partial(waiting.eventually, within=180.0, interval=0.5)

WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec:
  replicas: 3
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
metadata: {name: web, namespace: demo}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30081}]
"""

HEADLESS = """
apiVersion: v1
kind: Service
metadata: {name: web-pods, namespace: demo}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 8080, targetPort: http}]
"""


# N HTTP GETs from inside a namespace, the answers counted.
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


def processes_under(directory: Path) -> list[str]:
    """Processes whose root, working directory or command line is in `directory`:
    the lab's own and its containers' (their root is a rootfs under the lab)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            places = [os.readlink(proc / "root"), os.readlink(proc / "cwd")]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(p.startswith(str(directory)) for p in places) or str(directory) in cmdline:
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    # A short folder: unix socket paths are limited to 108 bytes.
    base = Path(f"/tmp/klad-{secrets.token_hex(3)}")
    prefix = f"klp{secrets.token_hex(2)}-"
    options = LabOptions(nodes=3, prefix=prefix, proxy="pod")
    with running_lab(base, options) as running:
        yield running
    # `lab down` left nothing: no process of the lab or of its containers, no namespace.
    assert processes_under(base) == []
    assert sorted(p.name for p in Path("/var/run/netns").glob(f"{prefix}*")) == []


@pytest.fixture
async def api(lab: Lab) -> AsyncIterator[Client]:
    async with lab.client(timeout=20) as client:
        yield client


async def live_pods(api: Client, namespace: str, selector: str) -> list[core_pb2.Pod]:
    listed = await api.pods.list(namespace, label_selector=selector)
    return [p for p in listed.items if not p.metadata.HasField("deletion_timestamp")]


async def snapshot(api: Client) -> str:
    """Pods and recent events, for a failure message."""
    lines = ["", "pods:"]
    for pod in (await api.pods.list("")).items:
        lines.append(
            f"  {pod.metadata.namespace}/{pod.metadata.name} node={pod.spec.node_name} "
            f"phase={pod.status.phase} ip={pod.status.pod_ip} ready={ready(pod)}"
        )
    lines.append("events:")
    for event in (await api.events.list("")).items[-30:]:
        lines.append(f"  {event.involved_object.name}: {event.reason} {event.message}")
    return "\n".join(lines)


def fetch(lab: Lab, where: str, url: str, count: int) -> dict[str, int]:
    done = subprocess.run(
        lab.exec_command(where, [sys.executable, "-c", FETCH, url, str(count)]),
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    answers: dict[str, int] = json.loads(done.stdout)
    return answers


@pytest.fixture
async def web(api: Client) -> core_pb2.Service:
    """The demo namespace: 3 web pods, their NodePort Service and a headless one,
    and a busybox client pod in demo and one in default (made by the first test
    that asks)."""
    await create_once(api.namespaces, parse(f"metadata: {{name: {DEMO}}}", core_pb2.Namespace()))
    await create_once(api.deployments, parse(WEB, apps_pb2.Deployment()))
    await create_once(api.services, parse(SERVICE, core_pb2.Service()))
    await create_once(api.services, parse(HEADLESS, core_pb2.Service()))
    await create_once(api.pods, client_pod(DEMO))
    await create_once(api.pods, client_pod("default"))

    async def all_ready() -> bool:
        found = await live_pods(api, DEMO, "app=web")
        clients = [await api.pods.get("client", ns) for ns in (DEMO, "default")]
        return len(found) == 3 and all(ready(p) for p in [*found, *clients])

    await eventually(all_ready, describe=lambda: snapshot(api))
    service: core_pb2.Service = await api.services.get("web", DEMO)
    return service


async def test_kube_proxy_runs_as_a_ready_pod_on_every_node(lab: Lab, api: Client) -> None:
    assert lab.state is not None and lab.state.proxy_mode == "pod"
    # No proxy process: the DaemonSet's pods program each node.
    assert all(node.proxy is None for node in lab.state.nodes)
    found = await live_pods(api, addons.NAMESPACE, "k8s-app=kube-proxy")
    assert sorted(p.spec.node_name for p in found if ready(p)) == list(NODES)
    for pod in found:
        assert pod.spec.host_network
        # On the node's own address, as the node's own process would be.
        node = lab.node(pod.spec.node_name)
        assert pod.status.pod_ip == node.ip
    daemon = await api.daemon_sets.get("kube-proxy", addons.NAMESPACE)
    assert daemon.status.number_ready == daemon.status.desired_number_scheduled == 3
    # Each joined with its own identity: a certificate for system:kube-proxy:NODE.
    rows = {row[0]: row for row in lab.status()}
    assert "proxy:pod" in rows["worker-1"][4]
    assert rows[f"add-on {addons.PROXY}"][4] == "DaemonSet 3/3 ready"
    assert rows[f"add-on {addons.DNS}"][4].endswith("ready")
    assert "DOWN" not in rows[f"add-on {addons.DNS}"][4]


async def test_services_answer_from_every_node(
    lab: Lab, api: Client, web: core_pb2.Service
) -> None:
    names = {p.metadata.name for p in await live_pods(api, DEMO, "app=web")}
    for node in NODES:
        # The ClusterIP from inside the node, and the NodePort from the lab network.
        for where, url in (
            (node, f"http://{web.spec.cluster_ip}/"),
            ("master", f"http://{lab.node(node).ip}:30081/"),
        ):

            async def answered(where: str = where, url: str = url) -> bool:
                answers = await asyncio.to_thread(fetch, lab, where, url, 12)
                assert set(answers) <= names and sum(answers.values()) == 12, (url, answers)
                return True

            # (Until each node's proxy pod has programmed the new Service.)
            await eventually(answered, within=60, retry_on=(AssertionError,))
    # And the ClusterIP from a pod.
    page = await run_in(api, "client", DEMO, ["wget", "-qO-", f"http://{web.spec.cluster_ip}/"])
    assert page.strip() in names


async def test_cli_explains_a_proxy_pod(lab: Lab, web: core_pb2.Service) -> None:
    """`kubeling proxy explain` reaches a proxy pod: no unix socket on this side of
    the lab network, so the CLI runs itself inside the node's namespace."""
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable, "-m", "kubeling.cli.main",
            "proxy", "explain", NODES[0], f"{web.spec.cluster_ip}:80",
        ],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "KUBELING_LAB_DIR": str(lab.dir),
             "KUBELING_CONFIG": str(lab.config_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"ClusterIP of service {DEMO}/web:" in done.stdout, done.stdout


async def test_pods_resolve_services_by_their_names(api: Client, web: core_pb2.Service) -> None:
    cluster_ip = web.spec.cluster_ip
    for name in ("web", "web.demo", "web.demo.svc.cluster.local"):
        assert await resolve(api, DEMO, name) == cluster_ip, name
    for name in ("web", "web.demo.svc.cluster.local"):
        assert await nslookup(api, DEMO, name) == {cluster_ip}, name
    names = {p.metadata.name for p in await live_pods(api, DEMO, "app=web")}
    # (busybox wget's -T crashes Debian's static busybox: no timeout flag.)
    for url in ("http://web/", "http://web.demo/"):
        page = await run_in(api, "client", DEMO, ["wget", "-qO-", url])
        assert page.strip() in names, url
    # From another namespace: NAME.NAMESPACE, not the bare name.
    assert await resolve(api, "default", "web.demo") == cluster_ip
    assert await nslookup(api, "default", "web.demo.svc.cluster.local") == {cluster_ip}
    assert await resolve(api, "default", "web") == ""


async def test_a_headless_service_resolves_to_its_ready_pods(
    api: Client, web: core_pb2.Service
) -> None:
    pod_ips = {p.status.pod_ip for p in await live_pods(api, DEMO, "app=web") if ready(p)}
    assert len(pod_ips) == 3

    async def resolved() -> bool:
        found = await nslookup(api, DEMO, "web-pods.demo.svc.cluster.local")
        assert found == pod_ips, (found, pod_ips)
        return True

    await eventually(resolved, within=30, retry_on=(AssertionError,))


async def test_a_pods_resolv_conf_names_the_cluster_dns(api: Client, web: core_pb2.Service) -> None:
    text = await run_in(api, "client", DEMO, ["cat", "/etc/resolv.conf"])
    lines = [line.split() for line in text.splitlines() if line.strip()]
    assert ["nameserver", addons.CLUSTER_DNS] in lines
    assert [line for line in lines if line[0] == "nameserver"] == [
        ["nameserver", addons.CLUSTER_DNS]
    ]
    search = next(line[1:] for line in lines if line[0] == "search")
    assert search[:3] == ["demo.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    options = [opt for line in lines if line[0] == "options" for opt in line[1:]]
    assert "ndots:5" in options


async def test_the_dns_pods_use_the_nodes_resolver_and_a_dns_role(api: Client) -> None:
    found = await live_pods(api, addons.NAMESPACE, "k8s-app=kube-dns")
    assert found and all(ready(p) for p in found)
    for pod in found:
        assert pod.spec.dns_policy == "Default"  # never itself
    # Its credential is a Secret, not a file on a node.
    secret = await api.secrets.get("kube-dns-credentials", addons.NAMESPACE)
    config = yaml.safe_load(secret.data["config"])
    assert config["server"] == "10.99.0.1:6443"
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(config["client-certificate-data"].encode())
    subject = cert.subject.rfc4514_string()
    assert "CN=kube-dns" in subject and "O=kubeling:dns" in subject


async def test_no_add_on_secret_on_a_command_line_or_in_a_log(lab: Lab, api: Client) -> None:
    """The proxy pods' bootstrap token and the DNS credential's key are in Secrets
    only: no process's command line and no pod or lab log holds them."""
    token = (await api.secrets.get("kube-proxy-bootstrap", addons.NAMESPACE)).data["token"]
    token_secret = token.decode().strip().partition(".")[2]
    assert len(token_secret) == 16
    config = yaml.safe_load(
        (await api.secrets.get("kube-dns-credentials", addons.NAMESPACE)).data["config"]
    )
    key_line = config["client-key-data"].splitlines()[1]  # a line of the key's base64
    ps = (
        await asyncio.to_thread(
            subprocess.run,
            ["ps", "-e", "-ww", "-o", "args="],
            capture_output=True,
            text=True,
            check=True,
        )
    ).stdout
    assert "kubeling-proxy --node-name=worker-1" in ps  # the pods' processes are there
    assert "kubeling-dns --config=/etc/kube-dns/config" in ps
    assert token_secret not in ps and key_line not in ps
    logs = [*lab.logs.glob("*.log"), *lab.dir.glob("nodes/*/pods/**/*.log")]
    assert any("kube-proxy" in str(log) for log in logs)  # the pods' logs are among them
    for log in logs:
        text = log.read_text(errors="replace")
        assert token_secret not in text, f"{log} holds the proxies' bootstrap token"
        assert key_line not in text and "PRIVATE KEY" not in text, f"{log} holds a key"


async def test_a_restarted_node_gets_its_proxy_pod_back(lab: Lab, api: Client) -> None:
    with pytest.raises(LabError, match="is a pod"):
        lab.start_component("worker-2", "proxy")
    with pytest.raises(LabError, match="is a pod"):
        lab.kill("worker-2", "proxy")
    await asyncio.to_thread(lab.stop_node, "worker-2")
    await asyncio.to_thread(lab.start_node, "worker-2")
    node = lab.node("worker-2")
    assert node.proxy is None and node.kubelet is not None  # no proxy process started

    async def proxies_ready() -> bool:
        assert node.kubelet is not None and node.kubelet.alive()
        found = await live_pods(api, addons.NAMESPACE, "k8s-app=kube-proxy")
        return sorted(p.spec.node_name for p in found if ready(p)) == list(NODES)

    await eventually(proxies_ready, describe=lambda: snapshot(api))
