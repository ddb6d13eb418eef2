"""Containers' environment from ConfigMaps, Secrets and the downward API, the
CreateContainerConfigError it may cause, and the CRI security context
(kubelet/containers.py, steps/start.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeling.cri.api import pb
from kubeling.kubelet.containers import (
    ContainerConfigError,
    container_config,
    resolve_environment,
)
from kubeling.kubelet.steps.app_containers import StartAppContainers
from kubeling.kubelet.volumes import VolumeError
from kubeling.v1 import core_pb2
from tests.kubelet.step_support import context, events, fake, make_pod, node_services
from tests.unit.test_kubelet_volumes import Objects


def objects() -> Objects:
    found = Objects()
    found.put_map("conf", {"MODE": "prod", "bad key": "x", "1st": "y"})
    found.put_secret("creds", {"PASSWORD": b"s3cret"})
    return found


async def test_env_from_with_prefix_skips_invalid_names() -> None:
    pod = make_pod()
    container = pod.spec.containers[0]
    container.env_from.add(prefix="APP_").config_map_ref.name = "conf"
    container.env_from.add().secret_ref.name = "creds"
    env, warnings = await resolve_environment(objects(), pod, container, "", "")
    assert dict(env) == {"APP_1st": "y", "APP_MODE": "prod", "PASSWORD": "s3cret"}
    assert warnings == [
        "Keys [bad key] from the EnvFrom configMap default/conf were skipped since they "
        "are considered invalid environment variable names."
    ]


async def test_key_refs_and_env_overriding_env_from() -> None:
    pod = make_pod()
    container = pod.spec.containers[0]
    container.env_from.add().config_map_ref.name = "conf"
    container.env.add(name="MODE", value="dev")  # replaces the ConfigMap's
    ref = container.env.add(name="DB_PASSWORD").value_from.secret_key_ref
    ref.name, ref.key = "creds", "PASSWORD"
    opt = container.env.add(name="MISSING").value_from.config_map_key_ref
    opt.name, opt.key, opt.optional = "conf", "nope", True
    gone = container.env.add(name="GONE").value_from.secret_key_ref
    gone.name, gone.key, gone.optional = "absent", "x", True
    container.env.add(name="URL", value="$(MODE)://$(DB_PASSWORD)")
    env, _ = await resolve_environment(objects(), pod, container, "", "")
    values = dict(env)
    assert values["MODE"] == "dev"
    assert values["DB_PASSWORD"] == "s3cret"
    assert "MISSING" not in values and "GONE" not in values
    assert values["URL"] == "dev://s3cret"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda c: setattr(c.env_from.add().config_map_ref, "name", "absent"),
         'configmap "absent" not found'),
        (lambda c: setattr(c.env_from.add().secret_ref, "name", "absent"),
         'secret "absent" not found'),
        (lambda c: c.env.add(name="X").value_from.secret_key_ref.MergeFrom(
            core_pb2.SecretKeySelector(name="creds", key="nope")),
         "couldn't find key nope in Secret default/creds"),
    ],
)  # fmt: skip
async def test_missing_required_sources_refuse_the_container(setup: object, message: str) -> None:
    pod = make_pod()
    setup(pod.spec.containers[0])  # type: ignore[operator]
    with pytest.raises(ContainerConfigError, match=message):
        await resolve_environment(objects(), pod, pod.spec.containers[0], "", "")


async def test_command_and_args_expand_the_containers_variables() -> None:
    """`$(VAR)` in command and args is the kubelet's to expand (from the resolved
    environment, Secrets and envFrom included); `$$` escapes; unknown stays."""
    pod = make_pod()
    container = pod.spec.containers[0]
    container.env_from.add(prefix="APP_").config_map_ref.name = "conf"
    ref = container.env.add(name="DB_PASSWORD").value_from.secret_key_ref
    ref.name, ref.key = "creds", "PASSWORD"
    container.env.add(name="IP").value_from.field_ref.field_path = "status.podIP"
    container.command[:] = ["sh", "-c"]
    container.args[:] = ["serve --ip=$(IP) --mode=$(APP_MODE) $$(IP) $(NOPE) $(DB_PASSWORD)"]
    env, _ = await resolve_environment(objects(), pod, container, "10.244.0.7", "")
    config = container_config(pod, container, 0, "img", "10.244.0.7", "", env=env)
    assert list(config.command) == ["sh", "-c"]
    assert list(config.args) == ["serve --ip=10.244.0.7 --mode=prod $(IP) $(NOPE) s3cret"]
    # Without a resolved environment: the plain and downward-API variables.
    plain = container_config(pod, container, 0, "img", "10.244.0.7", "")
    assert list(plain.args) == [
        "serve --ip=10.244.0.7 --mode=$(APP_MODE) $(IP) $(NOPE) $(DB_PASSWORD)"
    ]


async def test_resource_field_refs() -> None:
    pod = make_pod()
    container = pod.spec.containers[0]
    container.resources.limits.update({"cpu": "500m", "memory": "128Mi"})
    container.resources.requests["memory"] = "64Mi"
    for name, resource, divisor in (
        ("CPU", "limits.cpu", ""),
        ("CPU_M", "limits.cpu", "1m"),
        ("MEM_MI", "limits.memory", "1Mi"),
        ("REQ_MEM", "requests.memory", ""),
        ("REQ_CPU", "requests.cpu", "1m"),  # defaults to the limit
    ):
        ref = container.env.add(name=name).value_from.resource_field_ref
        ref.resource, ref.divisor = resource, divisor
    env, _ = await resolve_environment(objects(), pod, container, "", "")
    assert dict(env) == {
        "CPU": "1",
        "CPU_M": "500",
        "MEM_MI": "128",
        "REQ_MEM": str(64 * 1024 * 1024),
        "REQ_CPU": "500",
    }


async def test_a_missing_secret_is_create_container_config_error_until_it_exists(
    tmp_path: Path,
) -> None:
    source = Objects()
    node = node_services(tmp_path)
    node.objects = source
    pod = make_pod()
    ref = pod.spec.containers[0].env.add(name="P").value_from.secret_key_ref
    ref.name, ref.key = "creds", "PASSWORD"
    ctx = await context(node, pod, sandbox=True)
    await StartAppContainers(node).run(ctx)
    assert ctx.waiting["main"].reason == "CreateContainerConfigError"
    assert ctx.waiting["main"].message == 'secret "creds" not found'
    assert ctx.retry_after == 2.0
    assert fake(node).container_count == 0
    assert ("Warning", "Failed", 'Error: secret "creds" not found') in events(node).items

    source.put_secret("creds", {"PASSWORD": b"s3cret"})
    again = await context(node, pod, sandbox=True)
    await StartAppContainers(node).run(again)
    assert "main" not in again.waiting
    stored = next(iter(fake(node)._containers.values())).config
    assert [(e.key, e.value) for e in stored.envs] == [("P", "s3cret")]


def test_security_context_reaches_the_cri_config() -> None:
    pod = make_pod()
    pod.spec.security_context.run_as_user = 1000
    pod.spec.security_context.run_as_group = 3000
    pod.spec.security_context.fs_group = 2000
    pod.spec.security_context.supplemental_groups.extend([4000, 2000])
    sc = pod.spec.containers[0].security_context
    sc.run_as_user = 1001
    sc.read_only_root_filesystem = True
    sc.allow_privilege_escalation = False
    sc.capabilities.add.append("NET_ADMIN")
    sc.capabilities.drop.append("ALL")
    config = container_config(pod, pod.spec.containers[0], 0, "img", "", "")
    out = config.linux.security_context
    assert out.run_as_user.value == 1001  # the container's wins
    assert out.run_as_group.value == 3000  # the pod's
    assert list(out.supplemental_groups) == [2000, 4000]
    assert out.readonly_rootfs and out.no_new_privs and not out.privileged
    assert list(out.capabilities.add_capabilities) == ["NET_ADMIN"]
    assert list(out.capabilities.drop_capabilities) == ["ALL"]


def test_privileged_and_host_network_and_non_root() -> None:
    from kubeling.kubelet.containers import sandbox_config

    pod = make_pod(host_network=True)
    pod.spec.containers[0].security_context.privileged = True
    config = container_config(pod, pod.spec.containers[0], 0, "img", "", "")
    assert config.linux.security_context.privileged
    assert config.linux.security_context.namespace_options.network == pb.NODE
    assert not config.linux.security_context.no_new_privs
    assert sandbox_config(pod, Path("/tmp"), 0).linux.security_context.privileged
    plain = make_pod()
    assert not sandbox_config(plain, Path("/tmp"), 0).linux.security_context.privileged
    plain.spec.security_context.run_as_non_root = True
    plain.spec.security_context.run_as_user = 0
    with pytest.raises(ContainerConfigError, match="non-root"):
        container_config(plain, plain.spec.containers[0], 0, "img", "", "")


async def test_an_unreadable_source_is_retried_not_a_crash(tmp_path: Path) -> None:
    class Unreachable(Objects):
        async def secret(self, namespace: str, name: str) -> core_pb2.Secret | None:
            raise VolumeError("reading secret default/creds: UNAVAILABLE: no master")

    node = node_services(tmp_path)
    node.objects = Unreachable()
    pod = make_pod()
    pod.spec.containers[0].env_from.add().secret_ref.name = "creds"
    ctx = await context(node, pod, sandbox=True)
    await StartAppContainers(node).run(ctx)
    assert ctx.waiting["main"].reason == "CreateContainerConfigError"
    assert "UNAVAILABLE" in ctx.waiting["main"].message
    assert ctx.retry_after == 2.0
