from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubeling.cri.client import RuntimeClient
from kubeling.cri.fake import FakeCRIServer, FakeRuntime
from kubeling.cri.runtime import Runtime


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="cri-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def server(sock_dir: Path) -> AsyncIterator[FakeCRIServer]:
    fake = FakeRuntime(pod_cidr="10.88.0.0/24", images=["busybox"], missing_images=["nope"])
    async with FakeCRIServer(fake, f"unix://{sock_dir}/cri.sock") as srv:
        yield srv


@pytest.fixture
async def client(server: FakeCRIServer) -> AsyncIterator[RuntimeClient]:
    async with RuntimeClient(server.endpoint, timeout=5, retry_timeout=2) as c:
        yield c


@pytest.fixture(params=["grpc", "inproc"])
async def runtime(request: pytest.FixtureRequest, sock_dir: Path) -> AsyncIterator[Runtime]:
    """The same tests run through gRPC and straight against the in-process fake."""
    fake = FakeRuntime(pod_cidr="10.88.0.0/24", images=["busybox"], missing_images=["nope"])
    if request.param == "inproc":
        yield fake
        return
    async with (
        FakeCRIServer(fake, f"unix://{sock_dir}/cri.sock") as srv,
        RuntimeClient(srv.endpoint, timeout=5, retry_timeout=2) as c,
    ):
        yield c
