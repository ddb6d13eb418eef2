"""The fuzz cluster (one per session) and the tally of requests sent per RPC and
status codes seen, printed in the terminal summary."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator

import pytest

from tests.fuzz.cluster import FuzzCluster

# "server /package.Service/Method" -> status code name -> requests.
TALLY: defaultdict[str, Counter[str]] = defaultdict(Counter)


@pytest.fixture(scope="session")
def fuzz_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzCluster]:
    cluster = FuzzCluster(tmp_path_factory.mktemp("fuzz"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY:
        return
    terminalreporter.section("fuzz: requests sent per RPC, by status")
    total = 0
    for rpc_name in sorted(TALLY):
        codes = TALLY[rpc_name]
        sent = sum(codes.values())
        total += sent
        seen = " ".join(f"{code}={n}" for code, n in sorted(codes.items()))
        terminalreporter.write_line(f"{rpc_name:<52} {sent:>5}  {seen}")
    terminalreporter.write_line(f"{'total':<52} {total:>5}")
