"""Waiting for a condition in tests: one polling loop for every test module."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

# What a check may raise while the system is still getting there: a failed
# assertion, an object not there yet (LookupError, NOT_FOUND), a value not parsed.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    AssertionError,
    LookupError,
    ValueError,
    grpc.aio.AioRpcError,
)


async def eventually(
    check: Callable[[], Any],
    within: float = 10.0,
    *,
    interval: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = (),
    describe: Callable[[], Awaitable[str]] | None = None,
) -> Any:
    """Call `check` (plain or async) every `interval` seconds until it returns
    something truthy, and return that; fail after `within` seconds.

    An exception from `check` fails at once, unless it is one of `retry_on`
    (then it counts as "not yet"). `describe` adds the state of things to the
    failure message.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    result: Any = None
    error: BaseException | None = None
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
        except retry_on as exc:
            error = exc
        if loop.time() > deadline:
            message = f"condition not met in {within}s (last result: {result!r}"
            message += f", last error: {error!r})" if error is not None else ")"
            if describe is not None:
                message += await describe()
            raise AssertionError(message)
        await asyncio.sleep(interval)


async def eventually_passes(
    check: Callable[[], Any],
    within: float = 10.0,
    *,
    interval: float = 0.05,
    describe: Callable[[], Awaitable[str]] | None = None,
) -> Any:
    """`eventually`, with a check that raises one of TRANSIENT_ERRORS counting as
    "not yet" (for checks that assert, or read objects that may not exist yet)."""
    return await eventually(
        check, within, interval=interval, retry_on=TRANSIENT_ERRORS, describe=describe
    )
