from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubeling.cri.client import RuntimeClient
from kubeling.cri.errors import CRIError
from kubeling.cri.fake import FakeCRIServer, FakeRuntime
from kubeling.cri.runtime import Runtime
from tests.cri.helpers import Target
from tests.support.containerd import POD_CIDR, PrivateContainerd

FAKE_POD_CIDR = "10.88.0.0/24"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="cri-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _fake() -> FakeRuntime:
    return FakeRuntime(pod_cidr=FAKE_POD_CIDR, images=["busybox"], missing_images=["nope"])


@pytest.fixture
async def server(sock_dir: Path) -> AsyncIterator[FakeCRIServer]:
    async with FakeCRIServer(_fake(), f"unix://{sock_dir}/cri.sock") as srv:
        yield srv


@pytest.fixture
async def client(server: FakeCRIServer) -> AsyncIterator[RuntimeClient]:
    async with RuntimeClient(server.endpoint, timeout=5, retry_timeout=2) as c:
        yield c


@pytest.fixture(params=["grpc", "inproc"])
async def runtime(request: pytest.FixtureRequest, sock_dir: Path) -> AsyncIterator[Runtime]:
    """The fake alone (its behaviour language), through gRPC and in-process."""
    fake = _fake()
    if request.param == "inproc":
        yield fake
        return
    async with (
        FakeCRIServer(fake, f"unix://{sock_dir}/cri.sock") as srv,
        RuntimeClient(srv.endpoint, timeout=5, retry_timeout=2) as c,
    ):
        yield c


# -- the contract suite's targets ------------------------------------------------------


async def _remove_all_sandboxes(runtime: Runtime) -> None:
    # Each test starts from an empty runtime: names free, lists predictable.
    for sandbox in await runtime.list_pod_sandbox():
        with contextlib.suppress(CRIError):
            await runtime.stop_pod_sandbox(sandbox.id)
        await runtime.remove_pod_sandbox(sandbox.id)


@pytest.fixture(params=["fake-grpc", "fake-inproc", "containerd"])
async def target(request: pytest.FixtureRequest, sock_dir: Path) -> AsyncIterator[Target]:
    """The runtime a contract test runs against: the fake (through gRPC and
    in-process) and a real containerd. The same test must pass on each."""
    logs = sock_dir / "pods"
    if request.param == "fake-inproc":
        fake = _fake()
        yield Target(request.param, fake, FAKE_POD_CIDR, logs, fake=fake)
        return
    if request.param == "fake-grpc":
        fake = _fake()
        async with (
            FakeCRIServer(fake, f"unix://{sock_dir}/cri.sock") as srv,
            RuntimeClient(srv.endpoint, timeout=5, retry_timeout=2) as c,
        ):
            yield Target(request.param, c, FAKE_POD_CIDR, logs, fake=fake)
        return
    node: PrivateContainerd = request.getfixturevalue("containerd")
    async with RuntimeClient(node.endpoint, timeout=60, retry_timeout=5) as c:
        await _remove_all_sandboxes(c)
        try:
            yield Target(request.param, c, POD_CIDR, logs, cgroup_parent=node.cgroup_parent)
        finally:
            await _remove_all_sandboxes(c)
