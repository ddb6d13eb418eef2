"""StatefulSets and storage through the `kubeling` console script against a real
master process running the StatefulSet and PersistentVolume controllers:
Kubernetes' own StatefulSet example (headless Service + volumeClaimTemplates)
and a hostPath PV/PVC pair apply unchanged, `get sts|pv|pvc|sc` show kubectl's
columns, `scale statefulset` and `rollout status statefulset/NAME` work.

No kubelet runs: the test marks pods Running and Ready as a kubelet would."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kubeling.api.objects import clone
from kubeling.client import Client
from tests.integration.test_cli import kubeling, ok, table, write
from tests.support import waiting
from tests.support.processes import MasterProcess, running_master

eventually = functools.partial(
    waiting.eventually, within=30.0, interval=0.1, retry_on=waiting.TRANSIENT_ERRORS
)

# kubernetes.io's StatefulSet example ("web"), as published.
WEB = """\
apiVersion: v1
kind: Service
metadata:
  name: nginx
  labels:
    app: nginx
spec:
  ports:
  - port: 80
    name: web
  clusterIP: None
  selector:
    app: nginx
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  selector:
    matchLabels:
      app: nginx # has to match .spec.template.metadata.labels
  serviceName: "nginx"
  replicas: 3 # by default is 1
  minReadySeconds: 10 # by default is 0
  template:
    metadata:
      labels:
        app: nginx # has to match .spec.selector.matchLabels
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: nginx
        image: registry.k8s.io/nginx-slim:0.24
        ports:
        - containerPort: 80
          name: web
        volumeMounts:
        - name: www
          mountPath: /usr/share/nginx/html
  volumeClaimTemplates:
  - metadata:
      name: www
    spec:
      accessModes: [ "ReadWriteOnce" ]
      storageClassName: "my-storage-class"
      resources:
        requests:
          storage: 1Gi
"""

# kubernetes.io's hostPath PV and its claim ("Configure a Pod to Use a PersistentVolume").
TASK_PV = """\
apiVersion: v1
kind: PersistentVolume
metadata:
  name: task-pv-volume
  labels:
    type: local
spec:
  storageClassName: manual
  capacity:
    storage: 10Gi
  accessModes:
    - ReadWriteOnce
  hostPath:
    path: "/mnt/data"
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: task-pv-claim
spec:
  storageClassName: manual
  accessModes:
    - ReadWriteOnce
  resources:
    requests:
      storage: 3Gi
"""


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MasterProcess]:
    base = tmp_path_factory.mktemp("storage-master")
    with running_master(
        base,
        "--bookmark-interval",
        "1",
        "--controllers=statefulset,persistentvolume-binder",
    ) as proc:
        yield proc


async def _ready(address: str, name: str) -> None:
    async with Client(address, timeout=10) as api:
        pod = clone(await api.pods.get(name, "default"))
        pod.status.phase = "Running"
        del pod.status.conditions[:]
        pod.status.conditions.add(type="Ready", status="True")
        await api.pods.update_status(pod)


def test_statefulset_example_applies_lists_scales_and_rolls_out(
    master: MasterProcess, tmp_path: Path
) -> None:
    out = ok(master, "apply", "-f", write(tmp_path, "web.yaml", WEB))
    assert out.strip().splitlines() == ["service/nginx created", "statefulset.apps/web created"]
    rows = table(ok(master, "get", "sts"))
    assert rows[0] == ["NAME", "READY", "AGE"]
    assert rows[1][:2] == ["web", "0/3"]
    wide = table(ok(master, "get", "statefulsets", "-o", "wide"))
    assert wide[0] == ["NAME", "READY", "AGE", "CONTAINERS", "IMAGES"]
    assert wide[1][3:] == ["nginx", "registry.k8s.io/nginx-slim:0.24"]

    def claim_row() -> list[str]:
        rows = table(ok(master, "get", "pvc"))
        assert rows[0] == [
            "NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS MODES", "STORAGECLASS", "AGE",
        ]  # fmt: skip
        return next(r for r in rows if r[0] == "www-web-0")

    # No such class: the claim stays Pending (no provisioner for it).
    row = asyncio.run(eventually(claim_row))
    assert row[1] == "Pending" and row[-2] == "my-storage-class"
    # OrderedReady: only web-0 until it is Ready.
    names = [r[0] for r in table(ok(master, "get", "pods"))[1:]]
    assert names == ["web-0"]

    assert ok(master, "scale", "statefulset", "web", "--replicas", "1").strip() == (
        "statefulset.apps/web scaled"
    )
    waiting_out = kubeling(master, "rollout", "status", "statefulset/web", "--timeout", "1s")
    assert waiting_out.returncode == 1
    assert "Waiting for 1 pods to be ready..." in waiting_out.stdout
    asyncio.run(_ready(master.address, "web-0"))
    done = ok(master, "rollout", "status", "sts/web", "--timeout", "20s")
    assert done.strip().splitlines()[-1].startswith("statefulset rolling update complete 1 pods")
    revisions = table(ok(master, "get", "controllerrevisions"))
    assert revisions[0] == ["NAME", "CONTROLLER", "REVISION", "AGE"]
    assert revisions[1][0].startswith("web-") and revisions[1][1:3] == ["statefulset.apps/web", "1"]
    assert done.strip().splitlines()[-1].endswith(f"at revision {revisions[1][0]}...")
    # A new template, then back: history lists both revisions, undo restores the first.
    out = ok(master, "get", "sts", "web", "-o", "yaml")
    changed = out.replace("nginx-slim:0.24", "nginx-slim:0.25")
    assert ok(master, "apply", "-f", write(tmp_path, "web2.yaml", changed)).strip() == (
        "statefulset.apps/web configured"
    )
    history = table(ok(master, "rollout", "history", "statefulset/web"))
    assert history[0] == ["statefulset.apps/web"]
    assert history[1:] == [["REVISION", "CHANGE-CAUSE"], ["1", "<none>"], ["2", "<none>"]]
    assert ok(master, "rollout", "undo", "sts/web").strip() == "statefulset.apps/web rolled back"
    image = yaml.safe_load(ok(master, "get", "sts", "web", "-o", "yaml"))["spec"]["template"]
    assert image["spec"]["containers"][0]["image"] == "registry.k8s.io/nginx-slim:0.24"
    described = ok(master, "describe", "sts", "web")
    assert "serviceName: nginx" in described and "SuccessfulCreate" in described


def test_storage_class_and_static_volume_columns(master: MasterProcess, tmp_path: Path) -> None:
    rows = table(ok(master, "get", "sc"))
    assert rows[0] == [
        "NAME", "PROVISIONER", "RECLAIMPOLICY", "VOLUMEBINDINGMODE", "ALLOWVOLUMEEXPANSION", "AGE",
    ]  # fmt: skip
    assert rows[1][:5] == [
        "local-path (default)", "rancher.io/local-path", "Delete", "WaitForFirstConsumer", "false",
    ]  # fmt: skip
    out = ok(master, "apply", "-f", write(tmp_path, "task.yaml", TASK_PV))
    assert out.strip().splitlines() == [
        "persistentvolume/task-pv-volume created",
        "persistentvolumeclaim/task-pv-claim created",
    ]

    def bound() -> list[list[str]]:
        pv = table(ok(master, "get", "pv"))
        assert pv[1][4] == "Bound"
        return pv

    pv = asyncio.run(eventually(bound))
    assert pv[0] == [
        "NAME", "CAPACITY", "ACCESS MODES", "RECLAIM POLICY", "STATUS", "CLAIM",
        "STORAGECLASS", "REASON", "AGE",
    ]  # fmt: skip
    # The REASON cell is empty: the row has one cell fewer once split.
    assert pv[1][:7] == [
        "task-pv-volume", "10Gi", "RWO", "Retain", "Bound", "default/task-pv-claim", "manual",
    ]  # fmt: skip
    claim = next(r for r in table(ok(master, "get", "pvc")) if r[0] == "task-pv-claim")
    assert claim[1:6] == ["Bound", "task-pv-volume", "10Gi", "RWO", "manual"]
    # Re-applying the same manifests changes nothing (the binder's fields are kept).
    again = ok(master, "apply", "-f", write(tmp_path, "task.yaml", TASK_PV))
    assert again.strip().splitlines() == [
        "persistentvolume/task-pv-volume unchanged",
        "persistentvolumeclaim/task-pv-claim unchanged",
    ]
    claim = next(r for r in table(ok(master, "get", "pvc")) if r[0] == "task-pv-claim")
    assert claim[1:3] == ["Bound", "task-pv-volume"]
