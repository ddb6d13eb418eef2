from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kubeling.client import Client
from tests.support.containerd import PrivateContainerd, private_containerd, skip_reason
from tests.support.processes import MasterProcess, running_master


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MasterProcess]:
    """A real master process for the tests of one module."""
    # No controllers or scheduler: API tests see exactly what they wrote.
    base = tmp_path_factory.mktemp("master")
    with running_master(base, "--bookmark-interval", "1", "--controllers=") as proc:
        yield proc


@pytest.fixture(scope="module")
def containerd() -> Iterator[PrivateContainerd]:
    """One private containerd per test module (in a network namespace with no route
    off the machine): starting it and importing its images costs seconds. Under
    KUBELING_REQUIRE_REAL=1 a missing containerd fails instead of skipping."""
    reason = skip_reason()
    if reason:
        pytest.skip(f"containerd: {reason}")
    with private_containerd() as started:
        yield started


@pytest.fixture
async def api(master: MasterProcess) -> AsyncIterator[Client]:
    async with Client(master.address, timeout=10) as client:
        yield client


@pytest.fixture
def bin_path() -> Path:
    """The virtualenv's bin folder (kubeling, kubeling-master, grpcurl)."""
    import sys

    return Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI must not read the developer's ~/.kubeling/config in tests.
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBELING_SERVER", raising=False)
    monkeypatch.delenv("KUBELING_CONFIG", raising=False)
    assert os.environ["HOME"] == str(tmp_path)


# CI sets KUBELING_REQUIRE_REAL=1 (.ci/run): there a test that would skip because a
# real component (containerd, nftables, gcc, openssl, ...) is missing fails instead,
# so a missing install step cannot pass as green.
REQUIRE_REAL = os.environ.get("KUBELING_REQUIRE_REAL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_REAL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, but KUBELING_REQUIRE_REAL=1 forbids skips: {reason}"
