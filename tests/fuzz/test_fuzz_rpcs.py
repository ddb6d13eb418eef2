"""Property-based fuzzing of every RPC of every server (master, kubelet, proxy),
over TLS as each runs for users: the master's RPCs as its admin (and the kinds'
RPCs again as a node, through the Node authorizer's rules), Certificates/Join
without a certificate on the join port, the kubelet as the master, the proxy as
the admin (tests/fuzz/cluster.py).

Each RPC gets random well-typed requests (built from its input message's
descriptor) and malformed ones (truncated, raw random bytes), sent as bytes over a
generic channel. For every request:
- the answer is OK or a deliberate status (ALLOWED), never UNKNOWN or INTERNAL;
- a request the master refused left its store untouched (same revision);
and after each RPC's run the server still answers health SERVING.
Runs are reproducible (derandomize); the terminal summary tallies what was sent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import cast

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings

from kubeling.api.kinds import ALL_KINDS, NAMESPACE
from kubeling.v1 import (  # noqa: F401  (services in the pool)
    certificates_pb2,
    core_pb2,
    kubelet_pb2,
    proxy_pb2,
    tokens_pb2,
)
from tests.fuzz.cluster import FuzzCluster
from tests.fuzz.conftest import TALLY
from tests.fuzz.protostrategies import payloads
from tests.fuzz.seeds import seed_request

_C = grpc.StatusCode
ALLOWED = {
    _C.OK, _C.INVALID_ARGUMENT, _C.NOT_FOUND, _C.ALREADY_EXISTS, _C.ABORTED,
    _C.FAILED_PRECONDITION, _C.OUT_OF_RANGE, _C.UNAUTHENTICATED, _C.PERMISSION_DENIED,
    _C.RESOURCE_EXHAUSTED, _C.UNIMPLEMENTED, _C.UNAVAILABLE,
}  # fmt: skip
# A stream that is still open when the window ends is fine (a watch, a followed log).
STREAM_WINDOW = 0.1
UNARY_TIMEOUT = 15.0
# Examples per RPC, sized so that the whole suite stays well under its 90 s budget;
# KUBELING_FUZZ_EXAMPLES raises it for a longer hunt.
EXAMPLES = int(os.environ.get("KUBELING_FUZZ_EXAMPLES", "50"))
# The kinds' RPCs a second time as a node: the authorizer's decisions, not the
# registries behind them (already fuzzed as the admin), get these.
NODE_EXAMPLES = max(1, EXAMPLES * 3 // 10)
# Reproducible by default; KUBELING_FUZZ_RANDOM=1 draws new examples each run.
DERANDOMIZE = os.environ.get("KUBELING_FUZZ_RANDOM") != "1"


def _pool_service(full_name: str) -> ServiceDescriptor:
    # The kinds' modules are imported by kubeling.api.kinds, so the pool has them.
    return descriptor_pool.Default().FindServiceByName(full_name)


def _rpcs() -> Iterator[tuple[str, MethodDescriptor]]:
    for caller in ("master", "master-as-node"):
        for kind in ALL_KINDS:
            for method in _pool_service(kind.service).methods:
                yield caller, method
    for service in ("kubeling.v1.Tokens", "kubeling.v1.Certificates"):
        for method in _pool_service(service).methods:
            yield "master", method
    yield "master-join", _pool_service("kubeling.v1.Certificates").methods_by_name["Join"]
    for service, server in (("kubeling.v1.Kubelet", "kubelet"), ("kubeling.v1.Proxy", "proxy")):
        for method in _pool_service(service).methods:
            yield server, method


RPCS = list(_rpcs())

# Hypothesis warns that the seeded strategies have a long repr (the seed objects).
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")


@pytest.fixture(scope="module")
def channels(fuzz_cluster: FuzzCluster) -> Iterator[dict[str, grpc.Channel]]:
    opened = {name: fuzz_cluster.channel(name) for name in fuzz_cluster.credentials}
    yield opened
    for channel in opened.values():
        channel.close()


def _send(channel: grpc.Channel, path: str, streaming: bool, payload: bytes) -> grpc.StatusCode:
    try:
        if streaming:
            call = channel.unary_stream(path)(payload, timeout=STREAM_WINDOW)
            for count, _ in enumerate(call, 1):
                if count >= 3:
                    call.cancel()
                    break
        else:
            channel.unary_unary(path)(payload, timeout=UNARY_TIMEOUT)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        if streaming and code == _C.DEADLINE_EXCEEDED:
            return _C.OK  # open until our window closed: answered properly so far
        if code == _C.CANCELLED and streaming:
            return _C.OK  # we cancelled it after reading enough
        return code
    return _C.OK


def _settle(cluster: FuzzCluster) -> None:
    """Wait until no namespace is being deleted: the namespace controller's
    follow-up writes must not be blamed on the next request."""
    assert cluster.master is not None
    namespaces = cluster.master.registries[NAMESPACE.name]

    async def terminating() -> bool:  # read on the servers' loop, not beside it
        items = cast(list[core_pb2.Namespace], namespaces.list_objects("")[0])
        return any(n.metadata.HasField("deletion_timestamp") for n in items)

    deadline = time.monotonic() + 20
    while cluster.run(terminating()):
        assert time.monotonic() < deadline, "a namespace is stuck terminating"
        time.sleep(0.05)


def _healthy(channel: grpc.Channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.parametrize(
    ("server", "method"), RPCS, ids=[f"{s}:{m.containing_service.name}/{m.name}" for s, m in RPCS]
)
def test_rpc_answers_hostile_requests_properly(
    fuzz_cluster: FuzzCluster,
    channels: dict[str, grpc.Channel],
    server: str,
    method: MethodDescriptor,
) -> None:
    channel = channels[server]
    path = f"/{method.containing_service.full_name}/{method.name}"
    streaming = bool(method.server_streaming)
    tally = TALLY[f"{server} {method.containing_service.name}/{method.name}"]
    on_master = server.startswith("master")
    if on_master:
        fuzz_cluster.reseed_sync()
        _settle(fuzz_cluster)

    seed = seed_request(method.containing_service.name, method.name, fuzz_cluster.join_token)

    @settings(
        max_examples=NODE_EXAMPLES if server == "master-as-node" else EXAMPLES,
        deadline=None,
        derandomize=DERANDOMIZE,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(payloads(method.input_type, seed))
    def check(payload: bytes) -> None:
        before = fuzz_cluster.revision
        code = _send(channel, path, streaming, payload)
        tally[code.name] += 1
        assert code in ALLOWED, f"{path} answered {code.name} to {payload!r}"
        if not on_master:
            return
        if code != _C.OK:
            assert fuzz_cluster.revision == before, f"{path} refused {payload!r} but wrote"
        elif method.containing_service.name == "Namespaces":
            _settle(fuzz_cluster)

    check()
    assert _healthy(channel), f"{server} not SERVING after fuzzing {path}"
