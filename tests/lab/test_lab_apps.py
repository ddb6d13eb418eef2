"""What real applications need from a pod, on a 2-worker lab (kubeling.lab): real
master, containerd, kubelets and kube-proxy, images pulled from the lab's registry.

- configuration: a ConfigMap volume, a Secret and a ConfigMap key as env vars, a
  downwardAPI volume (labels, name, memory limit); a changed ConfigMap (and the
  pod's labels) reach the running container's files (not a subPath mount) without
  a restart; a non-root app reads its Secret volume through its fsGroup, gets
  envFrom and `$(VAR)` in args, and sees a rotated Secret; its hostname resolves;
- scratch space: two containers (and an init container) share an emptyDir;
  `medium: Memory` is a tmpfs; both outlive a container's restart;
- shutdown: a deleted pod's app gets SIGTERM and finishes within its grace period;
- a real server: `redis:7` from the lab registry answers PING by pod IP and ClusterIP;
- the master's SQLite store never holds a Secret's value in the clear;
- and, last, no event in the lab tells of a failed image pull.

Traffic stays in the lab's namespaces, which have no route off the machine."""

from __future__ import annotations

import asyncio
import base64
import functools
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubeling.client import Client
from kubeling.client.pods import pod_exec
from kubeling.lab.lab import Lab, LabOptions, running_lab
from kubeling.v1 import apps_pb2, core_pb2
from tests.support import waiting
from tests.support.containerd import skip_reason
from tests.support.lab_pods import parse, ready

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))

NS = "default"

eventually = functools.partial(waiting.eventually, within=120.0, interval=0.5)

# Unique per run: found in a file or the store only if this run put it there.
SECRET_VALUE = f"s3cr3t-{secrets.token_hex(8)}"

CONFIG = """
apiVersion: v1
kind: ConfigMap
metadata: {name: app-config, namespace: default}
data:
  greeting: hello-v1
  mode: fast
"""

SECRET = """
apiVersion: v1
kind: Secret
metadata: {name: app-secret, namespace: default}
type: Opaque
"""

APP = """
apiVersion: v1
kind: Pod
metadata:
  name: app
  namespace: default
  labels: {app: demo, tier: backend}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: busybox
      command: ["sleep", "100000"]
      resources:
        requests: {cpu: 10m, memory: 16Mi}
        limits: {memory: 64Mi}
      env:
        - name: DB_PASSWORD
          valueFrom: {secretKeyRef: {name: app-secret, key: password}}
        - name: MODE
          valueFrom: {configMapKeyRef: {name: app-config, key: mode}}
      volumeMounts:
        - {name: config, mountPath: /etc/app}
        - {name: config, mountPath: /etc/greeting-pinned, subPath: greeting}
        - {name: podinfo, mountPath: /etc/podinfo}
  volumes:
    - name: config
      configMap: {name: app-config}
    - name: podinfo
      downwardAPI:
        items:
          - path: labels
            fieldRef: {fieldPath: metadata.labels}
          - path: name
            fieldRef: {fieldPath: metadata.name}
          - path: mem_limit
            resourceFieldRef: {containerName: main, resource: limits.memory}
          - path: mem_limit_mi
            resourceFieldRef: {containerName: main, resource: limits.memory, divisor: 1Mi}
"""

# A non-root app as real ones are configured: a Secret volume readable through its
# fsGroup, mapped ConfigMap items, a projected volume, envFrom, and `$(VAR)`
# references in env values and in the command's args.
NON_ROOT = """
apiVersion: v1
kind: Pod
metadata: {name: nonroot, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000}
  containers:
    - name: main
      image: busybox
      command: ["sh", "-c"]
      args: ["echo $(CFG_mode) at $(POD_IP) on $(NODE) > /scratch/started; exec sleep 100000"]
      env:
        - name: POD_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        - name: NODE
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
        - name: URL
          value: "redis://:$(password)@$(POD_IP):6379"
        - name: CPU_MILLIS
          valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}
      envFrom:
        - {prefix: CFG_, configMapRef: {name: app-config}}
        - {secretRef: {name: app-secret}}
      resources: {limits: {cpu: 250m, memory: 32Mi}}
      volumeMounts:
        - {name: creds, mountPath: /etc/creds}
        - {name: settings, mountPath: /etc/settings}
        - {name: all, mountPath: /etc/all}
        - {name: scratch, mountPath: /scratch}
  volumes:
    - name: creds
      secret: {secretName: app-secret, defaultMode: 0440}
    - name: settings
      configMap: {name: app-config, items: [{key: mode, path: conf/mode.txt}]}
    - name: all
      projected:
        sources:
          - configMap: {name: app-config, items: [{key: mode, path: mode}]}
          - secret: {name: app-secret, items: [{key: password, path: password}]}
          - downwardAPI: {items: [{path: name, fieldRef: {fieldPath: metadata.name}}]}
    - {name: scratch, emptyDir: {}}
"""

SHARED = """
apiVersion: v1
kind: Pod
metadata: {name: shared, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  initContainers:
    - name: seed
      image: busybox
      command: ["sh", "-c", "echo seeded-before-start > /data/seed"]
      volumeMounts: [{name: data, mountPath: /data}]
  containers:
    - name: writer
      image: busybox
      # Runs until told to stop (a file), then exits: restarted, it writes again.
      command: ["sh", "-c"]
      args:
        - echo written-by-$(hostname) >> /data/note;
          until [ -e /data/stop ]; do sleep 0.2; done; rm /data/stop
      volumeMounts:
        - {name: data, mountPath: /data}
        - {name: cache, mountPath: /cache}
    - name: reader
      image: busybox
      command: ["sleep", "100000"]
      volumeMounts:
        - {name: data, mountPath: /data, readOnly: true}
  volumes:
    - {name: data, emptyDir: {}}
    - {name: cache, emptyDir: {medium: Memory, sizeLimit: 16Mi}}
"""

# Deleted, an app gets SIGTERM and its grace period to finish (redis saves its data
# then): it leaves a word in a hostPath folder, which outlives the pod.
GRACEFUL = """
apiVersion: v1
kind: Pod
metadata: {name: graceful, namespace: default}
spec:
  terminationGracePeriodSeconds: 30
  containers:
    - name: main
      image: busybox
      command: ["sh", "-c"]
      args:
        - trap 'echo saved-on-TERM > /out/$(POD_NAME); exit 0' TERM;
          while true; do sleep 0.2; done
      env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
      volumeMounts: [{name: out, mountPath: /out}]
  volumes:
    - name: out
      hostPath: {path: HOST_DIR, type: DirectoryOrCreate}
"""

REDIS = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: redis, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: redis}}
  template:
    metadata: {labels: {app: redis}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: redis
          image: redis:7
          ports: [{name: redis, containerPort: 6379}]
          readinessProbe: {tcpSocket: {port: 6379}, periodSeconds: 1}
          resources: {requests: {cpu: 10m, memory: 16Mi}}
"""

REDIS_SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: redis, namespace: default}
spec:
  selector: {app: redis}
  ports: [{name: redis, port: 6379, targetPort: redis}]
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    # A short folder: unix socket paths are limited to 108 bytes.
    base = Path(f"/tmp/kltest-{secrets.token_hex(3)}")
    options = LabOptions(nodes=2, prefix=f"kla{secrets.token_hex(2)}-")
    with running_lab(base, options) as running:
        yield running


@pytest.fixture
async def api(lab: Lab) -> AsyncIterator[Client]:
    async with lab.client(timeout=20) as client:
        yield client


def container_state(status: core_pb2.ContainerStatus) -> str:
    state = status.state
    if state.HasField("waiting"):
        return f"waiting {state.waiting.reason}: {state.waiting.message}"
    if state.HasField("terminated"):
        return f"exited {state.terminated.exit_code} {state.terminated.reason}"
    return "running" if state.HasField("running") else "unknown"


async def snapshot(api: Client, lab: Lab | None = None, app: str = "") -> str:
    """Pods (with their containers' states) and the default namespace's recent
    events, for a failure message; with `app`, that app's events and the end of
    its nodes' kubelet logs."""
    lines = ["", "pods:"]
    for pod in (await api.pods.list(NS)).items:
        containers = {
            c.name: f"{container_state(c)} restarts={c.restart_count}"
            for c in pod.status.container_statuses
        }
        lines.append(
            f"  {pod.metadata.name} node={pod.spec.node_name} phase={pod.status.phase} "
            f"ip={pod.status.pod_ip} ready={ready(pod)} {containers}"
        )
    events = (await api.events.list(NS)).items
    if app:
        events = [e for e in events if e.involved_object.name.startswith(app)]
    lines.append("events:")
    for event in events[-40:]:
        lines.append(f"  {event.involved_object.name}: {event.reason} {event.message}")
    if lab is not None and app:
        nodes = {
            p.spec.node_name
            for p in (await api.pods.list(NS, label_selector=f"app={app}")).items
            if p.spec.node_name
        }
        for node in sorted(nodes):
            log = lab.logs / f"{node}-kubelet.log"
            tail = log.read_text(errors="replace").splitlines()[-30:] if log.exists() else []
            lines += [f"{log.name}:", *(f"  {line}" for line in tail)]
    return "\n".join(lines)


async def run_ready(api: Client, name: str, within: float = 120) -> core_pb2.Pod:
    async def is_ready() -> bool:
        return ready(await api.pods.get(name, NS))

    await eventually(is_ready, within=within, describe=lambda: snapshot(api))
    return await api.pods.get(name, NS)


async def shell(api: Client, pod: str, script: str, container: str = "") -> str:
    """stdout of `sh -c script` in the pod; a non-zero exit fails the test."""
    reply = await pod_exec(api, pod, ["sh", "-c", script], NS, container=container)
    assert reply.exit_code == 0, (script, reply)
    return str(reply.stdout)


async def test_a_pod_reads_its_config_secret_and_downward_api(lab: Lab, api: Client) -> None:
    await api.config_maps.create(parse(CONFIG, core_pb2.ConfigMap()))
    secret = parse(SECRET, core_pb2.Secret())
    secret.data["password"] = SECRET_VALUE.encode()
    await api.secrets.create(secret)
    await api.pods.create(parse(APP, core_pb2.Pod()))
    await run_ready(api, "app")

    assert await shell(api, "app", "cat /etc/app/greeting") == "hello-v1"
    assert await shell(api, "app", "cat /etc/app/mode") == "fast"
    assert await shell(api, "app", "cat /etc/greeting-pinned") == "hello-v1"
    assert await shell(api, "app", 'echo "$DB_PASSWORD"') == SECRET_VALUE + "\n"
    assert await shell(api, "app", 'echo "$MODE"') == "fast\n"
    assert await shell(api, "app", "cat /etc/podinfo/name") == "app"
    assert await shell(api, "app", "cat /etc/podinfo/labels") == 'app="demo"\ntier="backend"'
    assert await shell(api, "app", "cat /etc/podinfo/mem_limit") == str(64 * 1024 * 1024)
    assert await shell(api, "app", "cat /etc/podinfo/mem_limit_mi") == "64"
    # Its memory limit is the cgroup's (what a JVM or redis' maxmemory reads).
    v1, v2 = "/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"
    limit = f"cat {v2} 2>/dev/null || cat {v1}"
    assert await shell(api, "app", limit) == f"{64 * 1024 * 1024}\n"
    # Its hostname is its name, and resolves to its IP (the kubelet's hosts file).
    pod = await api.pods.get("app", NS)
    assert await shell(api, "app", "hostname") == "app\n"
    hosts = await shell(api, "app", "cat /etc/hosts")
    assert f"{pod.status.pod_ip}\tapp" in hosts.replace(" ", "\t"), hosts
    # The Secret reached the container only as the env var asked for.
    assert SECRET_VALUE not in await shell(api, "app", "cat /etc/app/* /etc/podinfo/*")


async def test_a_changed_config_map_reaches_the_running_pod_but_not_its_sub_path(
    lab: Lab, api: Client
) -> None:
    before = await api.pods.get("app", NS)
    (status,) = before.status.container_statuses
    assert status.restart_count == 0 and status.container_id

    config = await api.config_maps.get("app-config", NS)
    config.data["greeting"] = "hello-v2"
    config.data["added"] = "new-key"
    await api.config_maps.update(config)

    async def updated() -> bool:
        return await shell(api, "app", "cat /etc/app/greeting") == "hello-v2"

    await eventually(updated, within=60, interval=1, describe=lambda: snapshot(api))
    # A new key appears as a new file.
    assert await shell(api, "app", "cat /etc/app/added") == "new-key"
    # A subPath mount is bound to the file it was given at start (as Kubernetes
    # documents): it keeps the old content.
    assert await shell(api, "app", "cat /etc/greeting-pinned") == "hello-v1"
    # The pod's own labels, changed, reach its downwardAPI file the same way.
    pod = await api.pods.get("app", NS)
    pod.metadata.labels["tier"] = "frontend"
    await api.pods.update(pod)

    async def relabelled() -> bool:
        text = await shell(api, "app", "cat /etc/podinfo/labels")
        return text == 'app="demo"\ntier="frontend"'

    await eventually(relabelled, within=60, interval=1, describe=lambda: snapshot(api))
    # Updated in place: the same container, never restarted.
    after = await api.pods.get("app", NS)
    (status_after,) = after.status.container_statuses
    assert status_after.restart_count == 0
    assert status_after.container_id == status.container_id
    assert after.metadata.uid == before.metadata.uid


async def test_a_non_root_app_gets_its_secret_files_env_from_and_expanded_command(
    lab: Lab, api: Client
) -> None:
    await api.pods.create(parse(NON_ROOT, core_pb2.Pod()))
    pod = await run_ready(api, "nonroot")
    ip, node = pod.status.pod_ip, pod.spec.node_name
    assert ip and node

    assert await shell(api, "nonroot", "id -u") == "1000\n"
    assert "2000" in (await shell(api, "nonroot", "id -G")).split()
    # 0440, group fsGroup: the non-root user reads it through its supplementary group.
    assert await shell(api, "nonroot", "cat /etc/creds/password") == SECRET_VALUE
    owner = await shell(api, "nonroot", "stat -L -c '%a %g' /etc/creds/password")
    assert owner == "440 2000\n"
    mounts = await shell(api, "nonroot", "cat /proc/mounts")
    types = {line.split()[1]: line.split()[2] for line in mounts.splitlines()}
    assert types.get("/etc/creds") == "tmpfs", mounts  # never on the node's disk
    # Only the mapped item, at its path; the volume is read-only.
    assert await shell(api, "nonroot", "cat /etc/settings/conf/mode.txt") == "fast"
    assert await shell(api, "nonroot", "ls /etc/settings") == "conf\n"
    refused = await pod_exec(api, "nonroot", ["touch", "/etc/settings/new"], NS)
    assert refused.exit_code != 0, refused
    # The projected volume holds the three sources' files.
    assert await shell(api, "nonroot", "cat /etc/all/mode /etc/all/password /etc/all/name") == (
        "fast" + SECRET_VALUE + "nonroot"
    )
    # envFrom (prefixed ConfigMap keys, Secret keys), $(VAR) in env values.
    assert await shell(api, "nonroot", 'echo "$CFG_mode $CFG_greeting"') == "fast hello-v2\n"
    assert await shell(api, "nonroot", 'echo "$password"') == SECRET_VALUE + "\n"
    assert await shell(api, "nonroot", 'echo "$URL"') == f"redis://:{SECRET_VALUE}@{ip}:6379\n"
    assert await shell(api, "nonroot", 'echo "$CPU_MILLIS"') == "250\n"
    # $(VAR) in args is expanded by the kubelet, not left to the shell.
    assert await shell(api, "nonroot", "cat /scratch/started") == f"fast at {ip} on {node}\n"

    # A changed Secret reaches its files (not the env of the running container).
    secret = await api.secrets.get("app-secret", NS)
    secret.data["password"] = (SECRET_VALUE + "-rotated").encode()
    await api.secrets.update(secret)

    async def rotated() -> bool:
        both = await shell(api, "nonroot", "cat /etc/creds/password /etc/all/password")
        return both == (SECRET_VALUE + "-rotated") * 2

    await eventually(rotated, within=60, interval=1, describe=lambda: snapshot(api))
    assert await shell(api, "nonroot", 'echo "$password"') == SECRET_VALUE + "\n"
    (status,) = (await api.pods.get("nonroot", NS)).status.container_statuses
    assert status.restart_count == 0


async def test_containers_share_an_empty_dir_and_memory_medium_is_tmpfs(
    lab: Lab, api: Client
) -> None:
    await api.pods.create(parse(SHARED, core_pb2.Pod()))
    await run_ready(api, "shared")

    async def written() -> str:
        return await shell(api, "shared", "cat /data/note", container="reader")

    assert await waiting.eventually_passes(written, 30, interval=0.5) == "written-by-shared\n"
    # What the init container left is there for both.
    assert await shell(api, "shared", "cat /data/seed", container="reader") == (
        "seeded-before-start\n"
    )
    # The reader's mount is read-only; the writer's is not.
    reply = await pod_exec(api, "shared", ["sh", "-c", "echo x > /data/other"], NS, "reader")
    assert reply.exit_code != 0, reply
    await shell(api, "shared", "echo back > /data/other", container="writer")
    assert await shell(api, "shared", "cat /data/other", container="reader") == "back\n"
    # medium: Memory is a tmpfs mount in the container; the plain one is not.
    mounts = await shell(api, "shared", "cat /proc/mounts", container="writer")
    types = {line.split()[1]: line.split()[2] for line in mounts.splitlines()}
    assert types.get("/cache") == "tmpfs", mounts
    cache = next(line for line in mounts.splitlines() if line.split()[1] == "/cache")
    assert "size=16384k" in cache, cache  # its sizeLimit

    # Both volumes outlive a container: the writer exits, is restarted, finds them.
    await shell(api, "shared", "echo kept > /cache/kept && touch /data/stop", "writer")

    async def restarted() -> bool:
        pod = await api.pods.get("shared", NS)
        writer = next(c for c in pod.status.container_statuses if c.name == "writer")
        return ready(pod) and writer.restart_count == 1

    await eventually(restarted, within=90, describe=lambda: snapshot(api))
    assert await shell(api, "shared", "cat /data/note", "writer") == "written-by-shared\n" * 2
    assert await shell(api, "shared", "cat /cache/kept /data/other", "writer") == "kept\nback\n"
    assert types.get("/data") != "tmpfs", mounts


async def test_a_deleted_pod_gets_sigterm_and_time_to_finish(lab: Lab, api: Client) -> None:
    out = lab.dir / "graceful-out"
    await api.pods.create(parse(GRACEFUL.replace("HOST_DIR", str(out)), core_pb2.Pod()))
    await run_ready(api, "graceful")
    started = asyncio.get_running_loop().time()
    await api.pods.delete("graceful", NS)

    async def gone() -> bool:
        names = [p.metadata.name for p in (await api.pods.list(NS)).items]
        return "graceful" not in names

    await eventually(gone, within=60, describe=lambda: snapshot(api))
    assert (out / "graceful").read_text() == "saved-on-TERM\n"
    # It exited on TERM: the pod went well before its 30 s grace period ran out.
    assert asyncio.get_running_loop().time() - started < 25


async def test_redis_from_the_lab_registry_answers_ping(lab: Lab, api: Client) -> None:
    await api.deployments.create(parse(REDIS, apps_pb2.Deployment()))
    await api.services.create(parse(REDIS_SERVICE, core_pb2.Service()))

    async def redis_ready() -> core_pb2.Pod | None:
        listed = await api.pods.list(NS, label_selector="app=redis")
        return next((p for p in listed.items if ready(p)), None)

    pod = await eventually(redis_ready, within=180, describe=lambda: snapshot(api, lab, "redis"))
    # Pulled through CRI (the lab registry is docker.io's mirror), not imported.
    events = (await api.events.list(NS)).items
    pulled = [
        e.message
        for e in events
        if e.involved_object.name == pod.metadata.name and e.reason == "Pulled"
    ]
    assert any('Successfully pulled image "redis:7"' in m for m in pulled), pulled
    service = await api.services.get("redis", NS)
    # From the busybox pod of the first test, by pod IP, then through the ClusterIP.
    for address in (pod.status.pod_ip, service.spec.cluster_ip):
        script = f"(printf 'PING\\r\\n'; sleep 1) | nc -w 5 {address} 6379"

        async def pong(script: str = script) -> bool:
            return await shell(api, "app", script) == "+PONG\r\n"

        # Until the proxy has the Service's endpoint, nc may fail: retried.
        await waiting.eventually_passes(pong, 30, interval=1, describe=lambda: snapshot(api))


async def test_the_store_file_holds_no_secret_in_the_clear(lab: Lab, api: Client) -> None:
    """The master's SQLite database (and its WAL) hold the Secret encrypted: neither
    its value nor the value's base64 is in the bytes, while the API returns it."""
    secret = await api.secrets.get("app-secret", NS)
    assert secret.data["password"] == (SECRET_VALUE + "-rotated").encode()  # as last written
    files = sorted((lab.dir / "master").glob("state.db*"))
    assert files and files[0].name == "state.db", files
    raw = b"".join(path.read_bytes() for path in files)
    assert len(raw) > 4096
    # The ConfigMap (not encrypted) is there: these are the right bytes.
    assert b"hello-v2" in raw
    # Neither the value first written nor the rotated one (which contains it).
    assert SECRET_VALUE.encode() not in raw
    assert base64.b64encode(SECRET_VALUE.encode()) not in raw
    assert base64.b64encode((SECRET_VALUE + "-rotated").encode()) not in raw
    assert b"app-secret" in raw  # the key names it; only its data is sealed


PULL_FAILURES = ("failed to pull", "falling back", "errimagepull", "back-off pulling")


async def test_no_event_tells_of_a_failed_pull(lab: Lab, api: Client) -> None:
    """Last: every image in this module came from the lab registry at first try."""
    events = (await api.events.list("")).items
    assert any(e.reason == "Pulled" for e in events), await snapshot(api)
    failed = [
        f"{e.metadata.namespace}/{e.involved_object.name}: {e.reason} {e.message}"
        for e in events
        if e.reason in ("ErrImagePull", "ImagePullBackOff")
        or (e.reason in ("Failed", "BackOff") and "pull" in e.message.lower())
        or any(words in e.message.lower() for words in PULL_FAILURES)
    ]
    assert not failed, failed
