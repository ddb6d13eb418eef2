"""Pod sessions (logs, exec, attach, port-forward) per client are bounded
(master/limits.py): the call over the limit is refused before it reaches a
kubelet, a client's ended session frees its slot, and other clients are not
affected; the sessions are counted in the master's metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from kubeling.master import metrics
from kubeling.master.limits import RequestLimits


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self, client: str) -> None:
        self.client = client
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)

    def code(self) -> grpc.StatusCode | None:
        return self.aborted[0] if self.aborted else None


class Sessions:
    """A bidi handler whose sessions stay open until `end` is set."""

    def __init__(self) -> None:
        self.started = 0
        self.end = asyncio.Event()

    async def relay(self, requests: Any, context: Any) -> AsyncIterator[bytes]:
        self.started += 1
        await self.end.wait()
        yield b"done"


def limits(max_sessions: int) -> RequestLimits:
    return RequestLimits(client_key=lambda context: context.client, max_sessions=max_sessions)


async def drain(call: AsyncIterator[bytes]) -> list[bytes]:
    return [item async for item in call]


async def test_sessions_over_the_per_client_limit_are_refused() -> None:
    sessions = Sessions()
    wrapped = limits(2).wrap(grpc.stream_stream_rpc_method_handler(sessions.relay), "ExecStream")
    assert wrapped.stream_stream is not None
    alice = [FakeContext("alice") for _ in range(3)]
    held = [asyncio.create_task(drain(wrapped.stream_stream(None, c))) for c in alice[:2]]
    await asyncio.sleep(0.05)
    assert sessions.started == 2
    with pytest.raises(Aborted):
        await drain(wrapped.stream_stream(None, alice[2]))
    assert alice[2].aborted is not None
    code, details = alice[2].aborted
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many pod sessions" in details and "alice" in details and "limit 2" in details
    assert sessions.started == 2  # the refused one never reached the relay
    # Another client has its own slots.
    bob = asyncio.create_task(drain(wrapped.stream_stream(None, FakeContext("bob"))))
    await asyncio.sleep(0.05)
    assert sessions.started == 3
    sessions.end.set()
    assert await asyncio.gather(*held, bob) == [[b"done"]] * 3
    # Ended sessions free their slots.
    assert await drain(wrapped.stream_stream(None, FakeContext("alice"))) == [b"done"]


async def test_logs_and_unary_exec_share_the_limit_and_zero_disables_it() -> None:
    sessions = Sessions()
    table = limits(1)
    logs = table.wrap(grpc.unary_stream_rpc_method_handler(sessions.relay), "Logs")
    assert logs.unary_stream is not None

    async def exec_call(request: Any, context: Any) -> bytes:
        return b"ran"

    exec_ = table.wrap(grpc.unary_unary_rpc_method_handler(exec_call), "Exec")
    assert exec_.unary_unary is not None
    following = asyncio.create_task(drain(logs.unary_stream(None, FakeContext("alice"))))
    await asyncio.sleep(0.05)
    with pytest.raises(Aborted):
        await exec_.unary_unary(None, FakeContext("alice"))
    sessions.end.set()
    await following
    assert await exec_.unary_unary(None, FakeContext("alice")) == b"ran"
    # 0: no limit; the handler is passed on as it is.
    plain = grpc.stream_stream_rpc_method_handler(sessions.relay)
    assert limits(0).wrap(plain, "PortForward") is plain


async def test_bidi_sessions_are_counted_in_the_metrics() -> None:
    sessions = Sessions()
    sessions.end.set()
    handler = metrics.instrument(
        grpc.stream_stream_rpc_method_handler(sessions.relay), "PortForward", "pods"
    )
    assert handler.stream_stream is not None
    counter = metrics.REQUESTS.labels("create", "pods", "portforward", "OK")
    before = counter._value.get()
    assert await drain(handler.stream_stream(None, FakeContext("alice"))) == [b"done"]
    assert counter._value.get() == before + 1
