from __future__ import annotations

import ipaddress

import grpc
import pytest

from kubeling.cri.api import pb
from kubeling.cri.errors import CRIError
from kubeling.cri.runtime import Runtime
from tests.cri.helpers import container_config, sandbox_config, start_pod


async def test_version_and_status(runtime: Runtime) -> None:
    version = await runtime.version()
    assert version.runtime_api_version == "v1"
    assert version.runtime_name == "kubeling-fake"
    status = await runtime.status()
    conditions = {c.type: c.status for c in status.status.conditions}
    assert conditions == {"RuntimeReady": True, "NetworkReady": True}


async def test_full_pod_lifecycle(runtime: Runtime) -> None:
    sandbox = sandbox_config(labels={"app": "web"}, annotations={"note": "hi"})
    assert await runtime.pull_image("busybox:1.36")
    sandbox_id = await runtime.run_pod_sandbox(sandbox, runtime_handler="runc")

    status = (await runtime.pod_sandbox_status(sandbox_id)).status
    assert status.state == pb.SANDBOX_READY
    assert ipaddress.ip_address(status.network.ip) in ipaddress.ip_network("10.88.0.0/24")
    assert status.metadata.name == "web" and status.metadata.uid == "uid-1"
    assert status.labels["app"] == "web" and status.annotations["note"] == "hi"
    assert status.runtime_handler == "runc"
    assert status.created_at > 1_600_000_000 * 10**9  # nanoseconds

    config = container_config(image="busybox:1.36", labels={"tier": "front"})
    container_id = await runtime.create_container(sandbox_id, config, sandbox)
    created = (await runtime.container_status(container_id)).status
    assert created.state == pb.CONTAINER_CREATED
    assert created.started_at == 0
    assert created.log_path == "/var/log/pods/default_web_uid-1/app/0.log"
    assert created.image_ref.startswith("docker.io/library/busybox@sha256:")
    assert created.image_id.startswith("sha256:")

    await runtime.start_container(container_id)
    running = (await runtime.container_status(container_id)).status
    assert running.state == pb.CONTAINER_RUNNING
    assert running.started_at >= running.created_at
    assert running.labels["tier"] == "front"
    assert running.metadata.name == "app"

    out, err, code = await runtime.exec_sync(container_id, ["echo", "hello", "world"], 5)
    assert (out, err, code) == (b"hello world\n", b"", 0)

    await runtime.stop_container(container_id, 1)
    stopped = (await runtime.container_status(container_id)).status
    assert stopped.state == pb.CONTAINER_EXITED
    assert stopped.exit_code == 143 and stopped.reason == "Error"
    assert stopped.finished_at >= stopped.started_at

    await runtime.remove_container(container_id)
    assert await runtime.list_containers(pod_sandbox_id=sandbox_id) == []

    await runtime.stop_pod_sandbox(sandbox_id)
    await runtime.stop_pod_sandbox(sandbox_id)  # idempotent
    stopped_sandbox = (await runtime.pod_sandbox_status(sandbox_id)).status
    assert stopped_sandbox.state == pb.SANDBOX_NOTREADY
    await runtime.remove_pod_sandbox(sandbox_id)
    assert await runtime.list_pod_sandbox() == []
    with pytest.raises(CRIError) as err_info:
        await runtime.pod_sandbox_status(sandbox_id)
    assert err_info.value.code == grpc.StatusCode.NOT_FOUND

    # The name is free again once the sandbox is removed.
    assert await runtime.run_pod_sandbox(sandbox) != sandbox_id


async def test_list_filters(runtime: Runtime) -> None:
    web = sandbox_config("web", "u1", labels={"app": "web"})
    db = sandbox_config("db", "u2", labels={"app": "db"})
    web_id, web_c = await start_pod(runtime, web, container_config("nginx", labels={"k": "a"}))
    db_id, db_c = await start_pod(runtime, db, container_config("pg", labels={"k": "b"}))
    idle = await runtime.create_container(db_id, container_config("sidecar"), db)
    await runtime.stop_pod_sandbox(db_id)

    assert {s.id for s in await runtime.list_pod_sandbox()} == {web_id, db_id}
    assert [s.id for s in await runtime.list_pod_sandbox(labels={"app": "db"})] == [db_id]
    assert [s.id for s in await runtime.list_pod_sandbox(state=pb.SANDBOX_READY)] == [web_id]
    assert [s.id for s in await runtime.list_pod_sandbox(id=db_id)] == [db_id]
    assert await runtime.list_pod_sandbox(labels={"app": "db"}, state=pb.SANDBOX_READY) == []
    assert await runtime.list_pod_sandbox(id="nope") == []

    assert len(await runtime.list_containers()) == 3
    assert {c.id for c in await runtime.list_containers(pod_sandbox_id=db_id)} == {db_c, idle}
    assert [c.id for c in await runtime.list_containers(labels={"k": "a"})] == [web_c]
    assert [c.id for c in await runtime.list_containers(state=pb.CONTAINER_RUNNING)] == [web_c]
    # Stopping a sandbox kills its running containers; created ones stay created.
    exited = await runtime.list_containers(state=pb.CONTAINER_EXITED)
    assert [c.id for c in exited] == [db_c]
    assert [c.id for c in await runtime.list_containers(state=pb.CONTAINER_CREATED)] == [idle]
    assert [c.id for c in await runtime.list_containers(id=web_c)] == [web_c]
    item = (await runtime.list_containers(id=web_c))[0]
    assert item.pod_sandbox_id == web_id and item.metadata.name == "nginx"
    killed = (await runtime.container_status(db_c)).status
    assert killed.exit_code == 137

    # Removing a stopped sandbox removes its containers too.
    await runtime.remove_pod_sandbox(db_id)
    assert [c.id for c in await runtime.list_containers()] == [web_c]


async def test_stats(runtime: Runtime) -> None:
    config = container_config(env={"FAKE_MEMORY": "64Mi", "FAKE_CPU_MILLICORES": "250"})
    sandbox_id, container_id = await start_pod(runtime, container=config)
    stats = await runtime.container_stats(container_id)
    assert stats.attributes.id == container_id
    assert stats.memory.working_set_bytes.value == 64 * 1024 * 1024
    assert stats.cpu.usage_nano_cores.value == 250_000_000
    listed = await runtime.list_container_stats(pod_sandbox_id=sandbox_id)
    assert [s.attributes.id for s in listed] == [container_id]
    assert await runtime.list_container_stats(labels={"missing": "x"}) == []
