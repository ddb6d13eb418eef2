"""The CRI contract suite: every test runs against the fake (through gRPC and
in-process) and against a real containerd (tests/support/containerd.py, in a network
namespace of its own with no route anywhere), so the fake cannot drift from what it
imitates. Where they differed, the fake was changed to answer as containerd does.

What a test may not assume: the runtime's name, image ids, or which images exist
besides `target.image`. Fake-only knobs (the FAKE_* behaviour language) live in
test_behaviour.py; a test here that needs a container to exit gives both a real
command and the fake's settings (`Target.exiting`).
"""

from __future__ import annotations

import ipaddress

import grpc
import pytest

from kubeling.cri.api import pb
from kubeling.cri.errors import CRIError
from tests.cri.helpers import Target
from tests.support.waiting import eventually


async def container_state(target: Target, container_id: str) -> pb.ContainerStatus:
    return (await target.runtime.container_status(container_id)).status


async def exited(target: Target, container_id: str) -> pb.ContainerStatus:
    """The container's status once it has exited by itself."""

    async def done() -> pb.ContainerStatus | None:
        status = await container_state(target, container_id)
        return status if status.state == pb.CONTAINER_EXITED else None

    result: pb.ContainerStatus = await eventually(done, 20)
    return result


# -- runtime ---------------------------------------------------------------------------


async def test_version_and_status(target: Target) -> None:
    version = await target.runtime.version()
    assert version.runtime_api_version == "v1"
    assert version.runtime_name and version.runtime_version
    status = await target.runtime.status()
    conditions = {c.type: c.status for c in status.status.conditions}
    assert conditions == {"RuntimeReady": True, "NetworkReady": True}


# -- lifecycle -------------------------------------------------------------------------


async def test_full_pod_lifecycle(target: Target) -> None:
    rt = target.runtime
    sandbox = target.sandbox(labels={"app": "web"}, annotations={"note": "hi"})
    sandbox_id = await rt.run_pod_sandbox(sandbox)

    status = (await rt.pod_sandbox_status(sandbox_id)).status
    assert status.id == sandbox_id
    assert status.state == pb.SANDBOX_READY
    assert ipaddress.ip_address(status.network.ip) in ipaddress.ip_network(target.pod_cidr)
    assert status.metadata.name == "web" and status.metadata.uid == "uid-1"
    assert status.labels["app"] == "web" and status.annotations["note"] == "hi"
    assert status.created_at > 1_600_000_000 * 10**9  # nanoseconds

    config = target.container(labels={"tier": "front"})
    container_id = await rt.create_container(sandbox_id, config, sandbox)
    created = await container_state(target, container_id)
    assert created.id == container_id
    assert created.state == pb.CONTAINER_CREATED
    assert created.started_at == 0 and created.finished_at == 0
    assert created.log_path == f"{sandbox.log_directory}/app/0.log"
    image = await rt.image_status(target.image)
    assert image is not None
    # The status names the image by its first tag, whatever name the config used.
    assert created.image.image == image.repo_tags[0]
    # A pulled image is named by its repo digest; an imported one by its id.
    assert created.image_ref in (*image.repo_digests, image.id)

    await rt.start_container(container_id)
    running = await container_state(target, container_id)
    assert running.state == pb.CONTAINER_RUNNING
    assert running.started_at >= running.created_at
    assert running.labels["tier"] == "front"
    assert running.metadata.name == "app"

    out, err, code = await rt.exec_sync(container_id, ["echo", "hello", "world"], 5)
    assert (out, err, code) == (b"hello world\n", b"", 0)
    assert (await rt.exec_sync(container_id, ["false"], 5)).exit_code == 1

    await rt.stop_container(container_id, 5)
    stopped = await container_state(target, container_id)
    assert stopped.state == pb.CONTAINER_EXITED
    assert (stopped.exit_code, stopped.reason) == (143, "Error")
    assert stopped.finished_at >= stopped.started_at

    await rt.remove_container(container_id)
    assert await rt.list_containers(pod_sandbox_id=sandbox_id) == []

    await rt.stop_pod_sandbox(sandbox_id)
    await rt.stop_pod_sandbox(sandbox_id)  # idempotent
    stopped_sandbox = (await rt.pod_sandbox_status(sandbox_id)).status
    assert stopped_sandbox.state == pb.SANDBOX_NOTREADY
    assert stopped_sandbox.network.ip == ""  # its network is gone
    await rt.remove_pod_sandbox(sandbox_id)
    await rt.remove_pod_sandbox(sandbox_id)  # idempotent
    assert await rt.list_pod_sandbox() == []
    with pytest.raises(CRIError) as err_info:
        await rt.pod_sandbox_status(sandbox_id)
    assert err_info.value.code == grpc.StatusCode.NOT_FOUND

    # The name is free again once the sandbox is removed.
    assert await rt.run_pod_sandbox(sandbox) != sandbox_id


async def test_containers_that_exit_by_themselves(target: Target) -> None:
    sandbox = target.sandbox()
    sandbox_id = await target.runtime.run_pod_sandbox(sandbox)
    for name, code, reason in (("ok", 0, "Completed"), ("bad", 3, "Error")):
        container_id = await target.runtime.create_container(
            sandbox_id, target.exiting(name, code), sandbox
        )
        await target.runtime.start_container(container_id)
        status = await exited(target, container_id)
        assert (status.exit_code, status.reason) == (code, reason)
        # Both set; containerd may record a quick exit a little before the start.
        assert status.finished_at > 0 and status.started_at > 0
        # Stopping an exited container changes nothing.
        await target.runtime.stop_container(container_id, 0)
        assert (await container_state(target, container_id)).exit_code == code


async def test_stop_with_zero_grace_is_sigkill(target: Target) -> None:
    _, container_id = await target.start_pod()
    await target.runtime.stop_container(container_id, 0)
    status = await container_state(target, container_id)
    assert (status.state, status.exit_code, status.reason) == (pb.CONTAINER_EXITED, 137, "Error")


async def test_start_error_leaves_the_container_exited(target: Target) -> None:
    sandbox = target.sandbox()
    sandbox_id = await target.runtime.run_pod_sandbox(sandbox)
    missing = "/no/such/program"
    env = {"FAKE_START_ERROR": f'exec: "{missing}": stat {missing}: no such file or directory'}
    config = target.container(command=[missing], env=env)
    container_id = await target.runtime.create_container(sandbox_id, config, sandbox)
    with pytest.raises(CRIError) as err:
        await target.runtime.start_container(container_id)
    assert err.value.code == grpc.StatusCode.UNKNOWN
    assert "failed to create containerd task" in err.value.details
    assert "no such file or directory" in err.value.details
    status = await container_state(target, container_id)
    assert (status.state, status.exit_code, status.reason) == (
        pb.CONTAINER_EXITED,
        128,
        "StartError",
    )
    assert "no such file or directory" in status.message


async def test_list_filters(target: Target) -> None:
    rt = target.runtime
    web = target.sandbox("web", "u1", labels={"app": "web"})
    db = target.sandbox("db", "u2", labels={"app": "db"})
    web_id, web_c = await target.start_pod(web, target.container("nginx", labels={"k": "a"}))
    db_id, db_c = await target.start_pod(db, target.container("pg", labels={"k": "b"}))
    idle = await rt.create_container(db_id, target.container("sidecar"), db)
    await rt.stop_pod_sandbox(db_id)

    assert {s.id for s in await rt.list_pod_sandbox()} == {web_id, db_id}
    assert [s.id for s in await rt.list_pod_sandbox(labels={"app": "db"})] == [db_id]
    assert [s.id for s in await rt.list_pod_sandbox(state=pb.SANDBOX_READY)] == [web_id]
    assert [s.id for s in await rt.list_pod_sandbox(id=db_id)] == [db_id]
    assert await rt.list_pod_sandbox(labels={"app": "db"}, state=pb.SANDBOX_READY) == []
    assert await rt.list_pod_sandbox(id="nope") == []
    (item,) = await rt.list_pod_sandbox(id=web_id)
    assert item.metadata.name == "web" and item.labels["app"] == "web"
    assert item.state == pb.SANDBOX_READY

    assert len(await rt.list_containers()) == 3
    assert {c.id for c in await rt.list_containers(pod_sandbox_id=db_id)} == {db_c, idle}
    assert [c.id for c in await rt.list_containers(labels={"k": "a"})] == [web_c]
    assert [c.id for c in await rt.list_containers(state=pb.CONTAINER_RUNNING)] == [web_c]
    # Stopping a sandbox kills its running containers; created ones stay created.
    exited_ids = [c.id for c in await rt.list_containers(state=pb.CONTAINER_EXITED)]
    assert exited_ids == [db_c]
    assert [c.id for c in await rt.list_containers(state=pb.CONTAINER_CREATED)] == [idle]
    assert [c.id for c in await rt.list_containers(id=web_c)] == [web_c]
    assert await rt.list_containers(id="nope") == []
    item = (await rt.list_containers(id=web_c))[0]
    assert item.pod_sandbox_id == web_id and item.metadata.name == "nginx"
    assert item.labels["k"] == "a" and item.image.image == target.image
    assert item.image_ref.startswith("sha256:")
    killed = await container_state(target, db_c)
    assert killed.exit_code == 137

    # Removing a stopped sandbox removes its containers too.
    await rt.remove_pod_sandbox(db_id)
    assert [c.id for c in await rt.list_containers()] == [web_c]


async def test_stats(target: Target) -> None:
    rt = target.runtime
    sandbox_id, container_id = await target.start_pod()
    stats = await rt.container_stats(container_id)
    assert stats.attributes.id == container_id
    assert stats.attributes.metadata.name == "app"
    assert stats.attributes.labels["io.kubernetes.container.name"] == "app"
    assert stats.writable_layer.fs_id.mountpoint
    listed = await rt.list_container_stats(pod_sandbox_id=sandbox_id)
    assert [s.attributes.id for s in listed] == [container_id]
    assert [s.attributes.id for s in await rt.list_container_stats(id=container_id)] == [
        container_id
    ]
    assert await rt.list_container_stats(labels={"missing": "x"}) == []


async def test_exec_past_its_timeout_is_deadline_exceeded(target: Target) -> None:
    config = target.container(env={"FAKE_EXEC_DELAY": "5s"})  # the fake's slow exec
    _, container_id = await target.start_pod(container=config)
    with pytest.raises(CRIError) as err:
        await target.runtime.exec_sync(container_id, ["sleep", "5"], 1)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert err.value.details == (
        "failed to exec in container: timeout 1s exceeded: context deadline exceeded"
    )


async def test_removing_a_running_container_kills_it(target: Target) -> None:
    sandbox_id, container_id = await target.start_pod()
    await target.runtime.remove_container(container_id)
    assert await target.runtime.list_containers(pod_sandbox_id=sandbox_id) == []
    with pytest.raises(CRIError) as err:
        await target.runtime.container_status(container_id)
    assert err.value.not_found
    # Its name is free again.
    assert await target.runtime.create_container(sandbox_id, target.container(), target.sandbox())


async def test_exec_in_exited_container_fails(target: Target) -> None:
    _, container_id = await target.start_pod()
    await target.runtime.stop_container(container_id, 0)
    with pytest.raises(CRIError, match="CONTAINER_EXITED"):
        await target.runtime.exec_sync(container_id, ["true"])


# -- errors ----------------------------------------------------------------------------


async def test_unknown_ids_are_not_found(target: Target) -> None:
    rt = target.runtime
    missing = "0" * 64
    for call in (
        rt.pod_sandbox_status(missing),
        rt.stop_pod_sandbox(missing),
        rt.container_status(missing),
        rt.start_container(missing),
        rt.stop_container(missing, 1),
        rt.exec_sync(missing, ["true"]),
        rt.container_stats(missing),
        rt.create_container(missing, target.container(), target.sandbox()),
    ):
        with pytest.raises(CRIError) as err:
            await call
        assert err.value.not_found, err.value
    # Removal is idempotent, as the CRI contract asks.
    await rt.remove_pod_sandbox(missing)
    await rt.remove_container(missing)


async def test_duplicate_sandbox_name_is_reserved(target: Target) -> None:
    first = await target.runtime.run_pod_sandbox(target.sandbox())
    with pytest.raises(CRIError) as err:
        await target.runtime.run_pod_sandbox(target.sandbox())
    assert err.value.code == grpc.StatusCode.UNKNOWN
    assert (
        err.value.details == 'failed to reserve sandbox name "web_default_uid-1_0": '
        f'name "web_default_uid-1_0" is reserved for "{first}"'
    )
    # A new attempt number is a new name.
    assert await target.runtime.run_pod_sandbox(target.sandbox(attempt=1))


async def test_duplicate_container_name_is_reserved(target: Target) -> None:
    sandbox = target.sandbox()
    sandbox_id, first = await target.start_pod(sandbox)
    with pytest.raises(CRIError) as err:
        await target.runtime.create_container(sandbox_id, target.container(), sandbox)
    assert err.value.code == grpc.StatusCode.UNKNOWN
    name = "app_web_default_uid-1_0"
    assert (
        err.value.details == f'failed to reserve container name "{name}": '
        f'name "{name}" is reserved for "{first}"'
    )


async def test_removing_a_ready_sandbox_stops_it_first(target: Target) -> None:
    sandbox_id, container_id = await target.start_pod()
    await target.runtime.remove_pod_sandbox(sandbox_id)
    assert await target.runtime.list_pod_sandbox() == []
    assert await target.runtime.list_containers() == []
    with pytest.raises(CRIError) as err:
        await target.runtime.container_status(container_id)
    assert err.value.not_found
    assert await target.runtime.run_pod_sandbox(target.sandbox())  # the name is free


async def test_start_twice_and_start_in_stopped_sandbox(target: Target) -> None:
    rt = target.runtime
    sandbox = target.sandbox()
    sandbox_id, container_id = await target.start_pod(sandbox)
    with pytest.raises(CRIError) as err:
        await rt.start_container(container_id)
    assert err.value.code == grpc.StatusCode.UNKNOWN
    assert err.value.details == (
        f'failed to set starting state for container "{container_id}": '
        "container is in CONTAINER_RUNNING state"
    )
    late = await rt.create_container(sandbox_id, target.container("late"), sandbox)
    await rt.stop_pod_sandbox(sandbox_id)
    with pytest.raises(CRIError) as err:
        await rt.start_container(late)
    assert err.value.details == f'sandbox container "{sandbox_id}" is not running'


async def test_no_new_container_in_a_stopped_sandbox(target: Target) -> None:
    sandbox = target.sandbox()
    sandbox_id = await target.runtime.run_pod_sandbox(sandbox)
    await target.runtime.stop_pod_sandbox(sandbox_id)
    with pytest.raises(CRIError) as err:
        await target.runtime.create_container(sandbox_id, target.container(), sandbox)
    assert err.value.not_found
    assert err.value.details == (
        "failed to get sandbox container task: no running task found: "
        f"task {sandbox_id} not found: not found"
    )


async def test_image_must_be_present_to_create(target: Target) -> None:
    sandbox = target.sandbox()
    sandbox_id = await target.runtime.run_pod_sandbox(sandbox)
    config = target.container()
    config.image.image = "nginx:1.25"
    with pytest.raises(CRIError) as err:
        await target.runtime.create_container(sandbox_id, config, sandbox)
    assert err.value.not_found
    assert 'failed to resolve image "nginx:1.25"' in err.value.details


# -- images ----------------------------------------------------------------------------


async def test_image_status_and_list(target: Target) -> None:
    rt = target.runtime
    image = await rt.image_status(target.image)
    assert image is not None
    assert image.id.startswith("sha256:") and image.size > 0
    assert "docker.io/library/busybox:latest" in image.repo_tags
    for ref in ("docker.io/library/busybox:latest", "busybox:latest", image.id, image.id[7:19]):
        found = await rt.image_status(ref)
        assert found is not None and found.id == image.id, ref
    for digest in image.repo_digests:
        found = await rt.image_status(digest)
        assert found is not None and found.id == image.id, digest
    assert await rt.image_status("nginx:1.25") is None

    everything = await rt.list_images()
    assert image.id in {i.id for i in everything}
    # containerd 1.6 ignores ListImages' filter.
    filtered = await rt.list_images("nginx:1.25")
    assert sorted(i.id for i in filtered) == sorted(i.id for i in everything)
    await rt.remove_image("nginx:1.25")  # removing what is not there is no error


async def test_pull_asks_the_registry_even_when_the_image_is_present(target: Target) -> None:
    # containerd's registry here is unreachable (no route from its namespace); the
    # fake's registry is told that it lacks the image.
    target.registry_lacks(target.image)
    image = await target.runtime.image_status(target.image)
    assert image is not None
    with pytest.raises(CRIError) as err:
        await target.runtime.pull_image(target.image)
    reference = "docker.io/library/busybox:latest"
    assert err.value.details.startswith(
        f'failed to pull and unpack image "{reference}": failed to resolve reference '
        f'"{reference}": '
    )
    # The image that is here stays usable.
    again = await target.runtime.image_status(target.image)
    assert again is not None and again.id == image.id
    assert await target.start_pod()
