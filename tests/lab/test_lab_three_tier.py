"""The seed's three-tier application (deploy/examples/three-tier.yaml, the file as
shipped) on a 2-worker lab with its defaults (cluster DNS on, kube-proxy a process
per node), every image pulled from the lab's registry:

- it answers on its NodePort (30090) from the lab network, on every node, with
  items that went front-end -> API -> redis and back, each answer naming the API
  pod and the front-end pod that served it;
- an item written before the database pod db-0 is deleted is read after db-0 comes
  back (on the same node: its local-path volume's node affinity);
- scaling the API from 2 to 5 under a client loop loses no request, and the new
  pods serve;
- rolling out a new front-end (the page's ConfigMap and a template annotation
  changed, applied as `kubeling apply` would) loses no request either.

Clients run in the lab master's network namespace (the lab network, outside every
node); traffic stays in the lab's namespaces, which have no route off the machine."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeling.client import Client
from kubeling.client.apply import apply_object
from kubeling.client.manifests import Manifest, load_manifests
from kubeling.lab.lab import Lab, LabOptions, running_lab
from kubeling.v1 import core_pb2
from tests.support import waiting
from tests.support.containerd import skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))

NS = "shop"
NODE_PORT = 30090
MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "three-tier.yaml"

eventually = functools.partial(waiting.eventually, within=240.0, interval=0.5)

# One HTTP request from inside a namespace: prints status, X-Served-By and body.
REQUEST = """
import json, sys, urllib.error, urllib.request
url, body = sys.argv[1], (sys.argv[2].encode() if len(sys.argv) > 2 else None)
request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
request.add_header("Content-Type", "application/json")
try:
    with urllib.request.urlopen(request, timeout=5) as answer:
        status, web, data = answer.status, answer.headers["X-Served-By"], answer.read()
except urllib.error.HTTPError as exc:
    status, web, data = exc.code, exc.headers["X-Served-By"], exc.read()
print(json.dumps({"status": status, "web": web, "body": data.decode()}))
"""

# GETs over the given URLs in turn until the stop file appears; every answer but a
# 200 counted as a failure, with what it was. The summary goes to stdout at the end.
LOOP = """
import collections, json, os, sys, time, urllib.request
stop, urls = sys.argv[1], sys.argv[2:]
served, failures, total, n = collections.Counter(), [], 0, 0
while not os.path.exists(stop):
    url = urls[n % len(urls)]
    n += 1
    total += 1
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            data = answer.read()
            if answer.status != 200:
                failures.append(f"{url}: {answer.status}")
            elif "/api/" in url:
                served["api:" + json.loads(data)["pod"]] += 1
            served["web:" + answer.headers["X-Served-By"]] += 1
    except Exception as exc:
        failures.append(f"{time.time():.1f} {url}: {type(exc).__name__}: {exc}")
print(json.dumps({"total": total, "served": served, "failures": failures}))
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    # A short folder: unix socket paths are limited to 108 bytes.
    base = Path(f"/tmp/kltest-{secrets.token_hex(3)}")
    options = LabOptions(nodes=2, prefix=f"kl3t{secrets.token_hex(2)}-")
    with running_lab(base, options) as running:
        yield running


@pytest.fixture
async def api(lab: Lab) -> AsyncIterator[Client]:
    async with lab.client(timeout=20) as client:
        yield client


def manifests() -> list[Manifest]:
    return load_manifests([str(MANIFEST)], io.StringIO())


async def apply(api: Client, objects: list[Manifest]) -> None:
    for manifest in objects:
        await apply_object(api.resource(manifest.kind), manifest.obj)


def node_urls(lab: Lab, path: str) -> list[str]:
    assert lab.state is not None
    return [f"http://{node.ip}:{NODE_PORT}{path}" for node in lab.state.nodes]


def request(lab: Lab, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    argv = [sys.executable, "-c", REQUEST, url] + ([json.dumps(body)] if body else [])
    done = subprocess.run(
        lab.exec_command("master", argv), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def ready(pod: core_pb2.Pod) -> bool:
    return (
        pod.status.phase == "Running"
        and not pod.metadata.HasField("deletion_timestamp")
        and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)
    )


async def pods(api: Client, app: str) -> list[core_pb2.Pod]:
    return list((await api.pods.list(NS, label_selector=f"app={app}")).items)


async def snapshot(api: Client) -> str:
    """Pods, claims and recent events, for a failure message."""
    lines = ["", "pods:"]
    for pod in (await api.pods.list(NS)).items:
        lines.append(
            f"  {pod.metadata.name} node={pod.spec.node_name} phase={pod.status.phase} "
            f"ip={pod.status.pod_ip} deleting={pod.metadata.HasField('deletion_timestamp')} "
            f"ready={ready(pod)}"
        )
    for pvc in (await api.persistent_volume_claims.list(NS)).items:
        lines.append(f"  claim {pvc.metadata.name} {pvc.status.phase} {pvc.spec.volume_name}")
    lines.append("events:")
    for event in (await api.events.list(NS)).items[-30:]:
        lines.append(f"  {event.involved_object.name}: {event.reason} {event.message}")
    return "\n".join(lines)


async def snapshot_of(api: Client, what: str) -> str:
    return f"\n{what}" + await snapshot(api)


async def all_ready(api: Client, counts: dict[str, int]) -> bool:
    """Exactly `counts` pods per app, every one Ready, none terminating."""
    for app, count in counts.items():
        found = await pods(api, app)
        if len(found) != count or not all(ready(p) for p in found):
            return False
    return True


class ClientLoop:
    """The LOOP script running in the master's namespace until stopped."""

    def __init__(self, lab: Lab, urls: list[str]) -> None:
        self.stop_file = lab.dir / f"stop-{secrets.token_hex(3)}"
        self.process = subprocess.Popen(
            lab.exec_command("master", [sys.executable, "-c", LOOP, str(self.stop_file), *urls]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(self) -> dict[str, Any]:
        self.stop_file.touch()
        out, err = self.process.communicate(timeout=60)
        assert self.process.returncode == 0, err
        summary: dict[str, Any] = json.loads(out)
        return summary

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # by its PID (nsenter execs the interpreter)
            self.process.wait()


async def test_answers_on_its_node_port_with_data_through_api_and_database(
    lab: Lab, api: Client
) -> None:
    await apply(api, manifests())
    counts = {"db": 1, "api": 2, "web": 2}
    await eventually(lambda: all_ready(api, counts), within=300, describe=lambda: snapshot(api))
    claim = await api.persistent_volume_claims.get("data-db-0", NS)
    assert claim.status.phase == "Bound", claim

    urls = node_urls(lab, "/api/items")
    # Until each node's kube-proxy has the NodePort and the API its database.
    await eventually(
        lambda: all(request(lab, url)["status"] == 200 for url in urls),
        describe=lambda: snapshot(api),
    )
    name = f"apple-{secrets.token_hex(3)}"
    posted = await asyncio.to_thread(request, lab, urls[0], {"name": name})
    assert posted["status"] == 201, posted
    item = json.loads(posted["body"])["item"]
    assert item["name"] == name

    api_pods = {p.metadata.name for p in await pods(api, "api")}
    web_pods = {p.metadata.name for p in await pods(api, "web")}
    for url in urls:
        answer = await asyncio.to_thread(request, lab, url)
        assert answer["status"] == 200, answer
        body = json.loads(answer["body"])
        assert item in body["items"], body
        assert body["db"] == "db-0.db"  # reached by its DNS name
        assert body["pod"] in api_pods and answer["web"] in web_pods, (answer, api_pods)
    page = await asyncio.to_thread(request, lab, node_urls(lab, "/")[1])
    assert page["status"] == 200 and "<h1>shop" in page["body"], page


async def test_data_written_before_the_database_pod_is_deleted_is_read_after(
    lab: Lab, api: Client
) -> None:
    url = node_urls(lab, "/api/items")[0]
    name = f"kept-{secrets.token_hex(3)}"
    posted = await asyncio.to_thread(request, lab, url, {"name": name})
    assert posted["status"] == 201, posted
    before = await api.pods.get("db-0", NS)

    await api.pods.delete("db-0", NS)

    async def back() -> bool:
        pod = await api.pods.get("db-0", NS)
        return pod.metadata.uid != before.metadata.uid and ready(pod)

    await eventually(back, describe=lambda: snapshot(api))
    again = await api.pods.get("db-0", NS)
    # The local-path volume is on the first node: the new pod went there too.
    assert again.spec.node_name == before.spec.node_name

    async def read_back() -> list[str]:
        answer = await asyncio.to_thread(request, lab, url)
        assert answer["status"] == 200, answer  # the API finds db-0's new address
        return [i["name"] for i in json.loads(answer["body"])["items"]]

    names = await eventually(read_back, describe=lambda: snapshot(api))
    assert name in names, names
    # Every API pod (one shares db-0's node) reads it promptly, asked at its own
    # address: a pod whose path to db-0 broke would only show up by chance above.
    for pod in await pods(api, "api"):
        pod_url = f"http://{pod.status.pod_ip}:8080/api/items"

        async def reads(pod_url: str = pod_url) -> bool:
            answer = await asyncio.to_thread(request, lab, pod_url)
            assert answer["status"] == 200, answer
            return name in answer["body"]

        where = f"{pod.metadata.name} on {pod.spec.node_name}, db-0 at {again.status.pod_ip}"
        await eventually(reads, within=15, describe=lambda where=where: snapshot_of(api, where))
    # And it takes writes again.
    posted = await asyncio.to_thread(request, lab, url, {"name": "after-restart"})
    assert posted["status"] == 201, posted


async def scale(api: Client, name: str, replicas: int) -> None:
    for _ in range(10):  # a controller may update the object in between
        deployment = await api.deployments.get(name, NS)
        deployment.spec.replicas = replicas
        try:
            await api.deployments.update(deployment)
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ABORTED:
                raise
    raise AssertionError(f"could not scale {name}")


async def test_scaling_the_api_to_five_under_a_client_loop_loses_no_request(
    lab: Lab, api: Client
) -> None:
    loop = ClientLoop(lab, node_urls(lab, "/api/items"))
    try:
        await asyncio.sleep(2)
        await scale(api, "api", 5)
        await eventually(
            lambda: all_ready(api, {"api": 5}), within=180, describe=lambda: snapshot(api)
        )
        await asyncio.sleep(10)  # long enough for every pod to be picked many times
        summary = await asyncio.to_thread(loop.finish)
    finally:
        loop.kill()
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}))
    assert summary["failures"] == [], summary
    served = {k.removeprefix("api:") for k in summary["served"] if k.startswith("api:")}
    assert served == {p.metadata.name for p in await pods(api, "api")}, summary
    assert summary["total"] > 50, summary


async def test_a_front_end_rollout_loses_no_request(lab: Lab, api: Client) -> None:
    old_pods = {p.metadata.name for p in await pods(api, "web")}
    changed = []
    for manifest in manifests():
        if manifest.kind.name == "ConfigMap" and manifest.name == "web-page":
            page = manifest.obj.data["index.html"]
            manifest.obj.data["index.html"] = page.replace('id="version">v1', 'id="version">v2')
            changed.append(manifest)
        elif manifest.kind.name == "Deployment" and manifest.name == "web":
            manifest.obj.spec.template.metadata.annotations["shop.example/page"] = "v2"
            changed.append(manifest)
    assert len(changed) == 2

    loop = ClientLoop(lab, node_urls(lab, "/") + node_urls(lab, "/api/items"))
    try:
        await asyncio.sleep(2)
        await apply(api, changed)

        async def rolled_out() -> bool:
            found = await pods(api, "web")
            return (
                len(found) == 2
                and all(ready(p) for p in found)
                and not {p.metadata.name for p in found} & old_pods
            )

        await eventually(rolled_out, within=180, describe=lambda: snapshot(api))
        await asyncio.sleep(3)
        summary = await asyncio.to_thread(loop.finish)
    finally:
        loop.kill()
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}))
    assert summary["failures"] == [], summary
    new_pods = {p.metadata.name for p in await pods(api, "web")}
    assert {k.removeprefix("web:") for k in summary["served"] if k.startswith("web:")} & new_pods
    for url in node_urls(lab, "/"):
        answer = await asyncio.to_thread(request, lab, url)
        assert 'id="version">v2' in answer["body"] and answer["web"] in new_pods, answer
