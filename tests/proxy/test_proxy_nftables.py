"""kube-proxy on real nftables: a real master, a real `kubeling-proxy` process inside a
node namespace, real pods (echo servers in their own namespaces) and real clients.

Traffic stays inside the namespaces this module creates (see tests/support/netlab.py).
EndpointSlices are written by the test, as the endpointslice controller would.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from kubeling.client import Client
from kubeling.v1 import core_pb2, discovery_pb2, proxy_pb2
from tests.support.netlab import NODE_IP, POD_CIDR, Lab, can_build
from tests.support.processes import MasterProcess, running_master, stop_process, wait_serving

pytestmark = pytest.mark.skipif(can_build() is not None, reason=str(can_build()))

NODE = "node-a"


class ProxyProcess:
    def __init__(self, lab: Lab, master: str, base: Path) -> None:
        self.lab = lab
        self.master = master
        self.socket = base / "proxy.sock"
        self.log = base / "proxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = self.lab.start(
            self.lab.node,
            sys.executable, "-m", "kubeling.proxy.main",
            "--master", self.master,
            "--node-name", NODE,
            "--insecure",  # the test master is plaintext on a unix socket
            "--cluster-cidr", POD_CIDR,
            "--min-sync-interval", "0.1",
            "--sync-period", "5",
            "--listen", f"unix:{self.socket}",
            "--healthz-bind-address", "127.0.0.1:10256",
            log=self.log,
        )  # fmt: skip
        wait_serving(f"unix:{self.socket}", process=self.process)
        deadline = time.monotonic() + 20
        while self.status().syncs == 0:
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def _call(self, method: str, request: Any, response: Any) -> Any:
        with grpc.insecure_channel(f"unix:{self.socket}") as channel:
            call = channel.unary_unary(
                f"/kubeling.v1.Proxy/{method}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response.FromString,
            )
            return call(request, timeout=10)

    def status(self) -> proxy_pb2.ProxyStatus:
        return self._call("Status", proxy_pb2.ProxyStatusRequest(), proxy_pb2.ProxyStatus)  # type: ignore[no-any-return]

    def explain(self, address: str, port: int, protocol: str = "TCP") -> proxy_pb2.ExplainResponse:
        request = proxy_pb2.ExplainRequest(address=address, port=port, protocol=protocol)
        return self._call("Explain", request, proxy_pb2.ExplainResponse)  # type: ignore[no-any-return]

    def wait_endpoints(
        self, address: str, port: int, expected: set[str], proto: str = "TCP"
    ) -> None:
        """Until the installed rules for address:port DNAT to exactly `expected` IPs."""
        deadline = time.monotonic() + 15
        while True:
            found = {ep.address for ep in self.explain(address, port, proto).endpoints}
            if found == expected:
                return
            assert time.monotonic() < deadline, f"{found} != {expected}\n{self.log.read_text()}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    built = Lab(pods=3)
    try:
        built.build()
        built.serve_echo()
        yield built
    finally:
        built.destroy()


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MasterProcess]:
    """The master on a unix socket, reachable from inside the lab (the `api`
    fixture of tests/conftest.py connects to this one)."""
    base = tmp_path_factory.mktemp("proxy-master")
    with running_master(base, "--controllers=", address=f"unix:{base / 'master.sock'}") as proc:
        yield proc


@pytest.fixture(scope="module")
def proxy(
    lab: Lab, master: MasterProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    proc = ProxyProcess(lab, master.address, tmp_path_factory.mktemp("proxy"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


async def make_service(
    api: Client,
    name: str,
    pods: list[int],
    node_port: int = 0,
    protocol: str = "TCP",
    affinity: bool = False,
) -> str:
    spec: dict[str, Any] = {
        "type": "NodePort" if node_port else "ClusterIP",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": protocol}],
    }
    if node_port:
        spec["ports"][0]["nodePort"] = node_port
    if affinity:
        spec["sessionAffinity"] = "ClientIP"
    service = json_format.ParseDict(
        {"metadata": {"name": name, "namespace": "default"}, "spec": spec}, core_pb2.Service()
    )
    created = await api.services.create(service)
    await set_endpoints(api, name, pods, protocol, create=True)
    return str(created.spec.cluster_ip)


async def set_endpoints(
    api: Client, name: str, pods: list[int], protocol: str = "TCP", create: bool = False
) -> None:
    body = {
        "metadata": {
            "name": f"{name}-slice",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [Lab.pod_ip(i)], "conditions": {"ready": True}} for i in pods],
        "ports": [{"name": "http", "port": 8080, "protocol": protocol}],
    }
    endpoint_slice = json_format.ParseDict(body, discovery_pb2.EndpointSlice())
    if create:
        await api.endpoint_slices.create(endpoint_slice)
        return
    current = await api.endpoint_slices.get(f"{name}-slice", "default")
    endpoint_slice.metadata.resource_version = current.metadata.resource_version
    await api.endpoint_slices.update(endpoint_slice)


def ips(pods: list[int]) -> set[str]:
    return {Lab.pod_ip(i) for i in pods}


async def test_cluster_ip_spreads_over_all_endpoints_from_pods_and_node(
    lab: Lab, proxy: ProxyProcess, api: Client
) -> None:
    vip = await make_service(api, "spread", [1, 2, 3])
    proxy.wait_endpoints(vip, 80, ips([1, 2, 3]))
    for netns in (lab.pod(1), lab.node):
        result = await asyncio.to_thread(lab.client, netns, "connect", vip, 80, 60)
        assert result["errors"] == {}, result
        assert set(result["answers"]) == {"pod1", "pod2", "pod3"}, result


# Each datagram from its own source port, a new flow (random ephemeral ports would
# repeat: 10,000 draws from ~28,000 ports give ~8,400 distinct flows).
SPREAD_SENDER = """
import socket, sys
for port in range(40000, 40000 + int(sys.argv[2])):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", port))
        sock.sendto(b"x", (sys.argv[1], 80))
"""


async def test_ten_endpoints_each_get_a_tenth_of_new_flows(
    lab: Lab, proxy: ProxyProcess, api: Client
) -> None:
    """The shared chain lb-10 draws an endpoint element per new flow. Counted in
    conntrack (the DNAT of each flow), so the ten endpoints need not exist: UDP
    datagrams from the node to addresses nobody holds in the pod network."""
    pods = list(range(190, 200))  # 10.244.0.200 .. .209: no such pods
    vip = await make_service(api, "spread10", pods, protocol="UDP")
    proxy.wait_endpoints(vip, 80, ips(pods), "UDP")
    assert proxy.explain(vip, 80, "UDP").chain == "lb-10"
    flows = 10_000
    await asyncio.to_thread(
        subprocess.run,
        ["ip", "netns", "exec", lab.node, sys.executable, "-c", SPREAD_SENDER, vip, str(flows)],
        check=True, timeout=120,
    )  # fmt: skip
    listing = await asyncio.to_thread(
        subprocess.run,
        ["ip", "netns", "exec", lab.node, "conntrack", "-L", "-p", "udp", "--orig-dst", vip],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    counts: dict[str, int] = {}
    for line in listing.stdout.splitlines():
        # orig: src=NODE dst=VIP ...; reply: src=ENDPOINT dst=NODE ...
        reply_source = line.split("src=")[2].split()[0]
        counts[reply_source] = counts.get(reply_source, 0) + 1
    assert sum(counts.values()) == flows, counts
    assert counts.keys() == ips(pods), counts
    for endpoint, count in counts.items():
        assert 700 <= count <= 1300, (endpoint, counts)  # 10% +- 3%


async def test_node_port_from_another_namespace(lab: Lab, proxy: ProxyProcess, api: Client) -> None:
    vip = await make_service(api, "nodeport", [2, 3], node_port=30080)
    proxy.wait_endpoints(vip, 80, ips([2, 3]))
    result = await asyncio.to_thread(lab.client, lab.outside, "connect", NODE_IP, 30080, 30)
    assert result["errors"] == {}, result
    assert set(result["answers"]) == {"pod2", "pod3"}, result
    explained = proxy.explain(NODE_IP, 30080)
    assert explained.verdict == "node-port"
    assert explained.service == "default/nodeport:http"
    assert explained.masquerade


EXTERNAL_IP = "198.51.100.7"  # TEST-NET-2: reaches the node only by the outside's default route


async def test_external_ip_and_load_balancer_ingress_reach_the_endpoints(
    lab: Lab, proxy: ProxyProcess, api: Client
) -> None:
    """As the servicelb controller would, the test writes the node's address into the
    Service's load balancer status; both it and an externalIP are DNATed to the pods."""
    body = {
        "metadata": {"name": "lb", "namespace": "default"},
        "spec": {
            "type": "LoadBalancer",
            "externalIPs": [EXTERNAL_IP],
            "ports": [{"name": "http", "port": 8081, "targetPort": 8080, "protocol": "TCP"}],
        },
    }
    created = await api.services.create(json_format.ParseDict(body, core_pb2.Service()))
    try:
        created.status.load_balancer.ingress.add(ip=NODE_IP)
        await api.services.update_status(created)
        await set_endpoints(api, "lb", [1, 3], create=True)
        proxy.wait_endpoints(EXTERNAL_IP, 8081, ips([1, 3]))
        proxy.wait_endpoints(NODE_IP, 8081, ips([1, 3]))
        for address in (EXTERNAL_IP, NODE_IP):
            explained = proxy.explain(address, 8081)
            assert explained.verdict == "external-ip", explained
            assert explained.service == "default/lb:http"
            assert explained.masquerade
            result = await asyncio.to_thread(lab.client, lab.outside, "connect", address, 8081, 20)
            assert result["errors"] == {}, result
            assert set(result["answers"]) == {"pod1", "pod3"}, result
        # From the node itself too (nat output).
        result = await asyncio.to_thread(lab.client, lab.node, "connect", EXTERNAL_IP, 8081, 10)
        assert result["errors"] == {}, result
    finally:
        await api.services.delete("lb", "default")
        await api.endpoint_slices.delete("lb-slice", "default")
    deadline = time.monotonic() + 15
    while proxy.explain(EXTERNAL_IP, 8081).verdict != "none":
        assert time.monotonic() < deadline, "externalIP still mapped after the Service went"
        await asyncio.sleep(0.05)


async def test_removed_endpoint_gets_no_new_connections(
    lab: Lab, proxy: ProxyProcess, api: Client
) -> None:
    vip = await make_service(api, "shrink", [1, 2, 3])
    proxy.wait_endpoints(vip, 80, ips([1, 2, 3]))
    await set_endpoints(api, "shrink", [1, 2])
    proxy.wait_endpoints(vip, 80, ips([1, 2]))
    result = await asyncio.to_thread(lab.client, lab.pod(3), "connect", vip, 80, 40)
    assert result["errors"] == {}, result
    assert set(result["answers"]) == {"pod1", "pod2"}, result


async def test_no_endpoints_is_refused_at_once(lab: Lab, proxy: ProxyProcess, api: Client) -> None:
    vip = await make_service(api, "empty", [], node_port=30081)
    deadline = time.monotonic() + 15
    while proxy.explain(vip, 80).verdict != "no-endpoints":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    for netns, host, port in ((lab.pod(1), vip, 80), (lab.outside, NODE_IP, 30081)):
        result = await asyncio.to_thread(lab.client, netns, "connect", host, port, 3)
        assert result["errors"] == {"refused": 3}, result
        assert result["slowest"] < 0.5, result


async def test_client_ip_affinity_sticks(lab: Lab, proxy: ProxyProcess, api: Client) -> None:
    vip = await make_service(api, "sticky", [1, 2, 3], affinity=True)
    proxy.wait_endpoints(vip, 80, ips([1, 2, 3]))
    assert proxy.explain(vip, 80).session_affinity
    for netns in (lab.pod(1), lab.node):
        result = await asyncio.to_thread(lab.client, netns, "connect", vip, 80, 30)
        assert result["errors"] == {}, result
        assert len(result["answers"]) == 1, result  # every connection to one pod


async def test_pod_reaches_itself_through_its_service(
    lab: Lab, proxy: ProxyProcess, api: Client
) -> None:
    vip = await make_service(api, "hairpin", [2])
    proxy.wait_endpoints(vip, 80, ips([2]))
    result = await asyncio.to_thread(lab.client, lab.pod(2), "connect", vip, 80, 5)
    assert result == {"answers": {"pod2": 5}, "errors": {}, "slowest": result["slowest"]}


async def test_udp_flows_move_when_their_endpoint_goes(
    lab: Lab, proxy: ProxyProcess, api: Client
) -> None:
    vip = await make_service(api, "dns", [1], protocol="UDP")
    proxy.wait_endpoints(vip, 80, ips([1]), "UDP")
    client = lab.client_background(lab.pod(3), "udp", vip, 80, 4)
    await asyncio.sleep(1.0)
    await set_endpoints(api, "dns", [2], protocol="UDP")
    out, _ = await asyncio.to_thread(client.communicate, timeout=30)
    replies = json.loads(out)["replies"]
    assert replies[0] == "pod1", replies
    # The same socket (same conntrack entry) reaches the new endpoint: the stale
    # entry to pod1 (still alive and answering) was cleared.
    assert replies[-5:] == ["pod2"] * 5, replies


async def test_proxy_restart_never_breaks_a_client(
    lab: Lab, proxy: ProxyProcess, api: Client
) -> None:
    vip = await make_service(api, "steady", [1, 3], node_port=30082)
    proxy.wait_endpoints(vip, 80, ips([1, 3]))
    loops = [
        lab.client_background(lab.pod(2), "loop", vip, 80, 6),
        lab.client_background(lab.outside, "loop", NODE_IP, 30082, 6),
    ]
    await asyncio.sleep(1.0)
    assert proxy.process is not None
    proxy.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(proxy.process.wait, 10)
    await asyncio.sleep(0.5)  # no proxy at all for a while: the rules stay
    await asyncio.to_thread(proxy.start)  # replaces the table in one transaction
    for client in loops:
        out, _ = await asyncio.to_thread(client.communicate, timeout=60)
        result = json.loads(out)
        assert result["errors"] == {}, result
        assert sum(result["answers"].values()) > 100, result


async def test_health_and_metrics(lab: Lab, proxy: ProxyProcess) -> None:
    def get(path: str) -> tuple[int, str]:
        done = subprocess.run(
            [
                "ip", "netns", "exec", lab.node, sys.executable, "-c",
                "import urllib.request,sys\n"
                "try:\n"
                f"  r = urllib.request.urlopen('http://127.0.0.1:10256{path}', timeout=5)\n"
                "  print(r.status); print(r.read().decode())\n"
                "except urllib.error.HTTPError as e:\n"
                "  print(e.code); print(e.read().decode())\n",
            ],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        code, _, body = done.stdout.partition("\n")
        return int(code), body

    code, body = get("/healthz")
    assert code == 200 and json.loads(body)["lastUpdated"]
    assert get("/livez")[0] == 200
    code, body = get("/metrics")
    assert code == 200
    assert "kubeproxy_sync_full_proxy_rules_duration_seconds_count" in body
    assert "kubeproxy_network_programming_duration_seconds_bucket" in body


async def test_cli_explain_reads_the_kernel(
    lab: Lab, proxy: ProxyProcess, api: Client, master: MasterProcess
) -> None:
    vip = await make_service(api, "explained", [1, 2])
    proxy.wait_endpoints(vip, 80, ips([1, 2]))
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable, "-m", "kubeling.cli.main", "--server", master.address,
            "proxy", "explain", NODE, f"{vip}:80", "--proxy", f"unix:{proxy.socket}",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{vip}:80/TCP: ClusterIP of service default/explained:http" in done.stdout
    assert f"{Lab.pod_ip(1)}:8080" in done.stdout and f"{Lab.pod_ip(2)}:8080" in done.stdout
    # Two endpoints: the shared chain lb-2 picks one of two endpoint-map elements.
    assert "(chain lb-2)" in done.stdout
    assert "numgen random mod 2 map @service-endpoints" in done.stdout
    # What it read is what the kernel has: nft itself lists the same elements.
    listing = (
        await asyncio.to_thread(
        subprocess.run,
        ["ip", "netns", "exec", lab.node, "nft", "list", "table", "ip", "kubeling"],
        capture_output=True, text=True, check=True,
    )).stdout  # fmt: skip
    shown = {line.strip() for line in done.stdout.splitlines()}
    for index in (0, 1):
        element = f"{vip} . tcp . 80 . {index} : "
        (line,) = [s for s in shown if s.startswith(f"service-endpoints: {element}")]
        assert line.removeprefix("service-endpoints: ") in listing
    assert f'{vip} . tcp . 80 comment "default/explained:http" : goto lb-2' in listing


async def test_grpcurl_sees_the_proxy_api(proxy: ProxyProcess, bin_path: Path) -> None:
    def grpcurl(*args: str) -> str:
        *flags, method = args
        done = subprocess.run(
            [str(bin_path / "grpcurl"), "-plaintext", "-unix", *flags, str(proxy.socket), method],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = await asyncio.to_thread(grpcurl, "list")
    assert "kubeling.v1.Proxy" in listed and "grpc.health.v1.Health" in listed
    status = json.loads(await asyncio.to_thread(grpcurl, "kubeling.v1.Proxy/Status"))
    # (grpcurl prints the proto field names)
    assert status["node_name"] == NODE and status["mode"] == "nftables"
    assert status["healthy"] is True and int(status["syncs"]) >= 1
    explained = json.loads(
        await asyncio.to_thread(
            grpcurl, "-d", '{"address":"10.0.0.1","port":99}', "kubeling.v1.Proxy/Explain"
        )
    )
    assert explained == {"verdict": "none"}
