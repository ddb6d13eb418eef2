"""Shared pieces of every kubeling gRPC service (master, kubelet): request parsing
that turns undecodable bytes into INVALID_ARGUMENT instead of UNKNOWN, and the
unary wrapper that maps `ApiError` to its rich status and anything unexpected to
INTERNAL while the server carries on."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError, Message

from kubeling.api.errors import ApiError

log = structlog.get_logger(__name__)

# grpc ships no type information: the servicer context is typed loosely.
Context = Any


@dataclass(frozen=True)
class Malformed:
    """A request whose bytes did not parse; answered with INVALID_ARGUMENT."""

    message_name: str
    error: str

    def to_error(self) -> ApiError:
        return ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request is not a valid {self.message_name}: {self.error}",
        )


async def start_message(requests: AsyncIterator[Any]) -> Any:
    """A session stream's first message (exec, attach, port-forward: master and
    kubelet alike), which must parse and be `start`."""
    try:
        first = await anext(requests)
    except StopAsyncIteration:
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT, "start: the stream ended before it"
        ) from None
    if isinstance(first, Malformed):
        raise first.to_error()
    if first.WhichOneof("kind") != "start":
        raise ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"start: Required value: the first {type(first).__name__} must be start",
        )
    return first


def parser(message: type[Message]) -> Callable[[bytes], Message | Malformed]:
    def parse(data: bytes) -> Message | Malformed:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            return Malformed(message.DESCRIPTOR.full_name, str(exc))

    return parse


def serialize(message: bytes | Message) -> bytes:
    """Messages, or bytes already serialised (shared watch events, forwarded replies)."""
    return message if isinstance(message, bytes) else message.SerializeToString()


# Decides whether the caller may call at all (ApiError if not); it runs before
# anything of the request is looked at.
CallerCheck = Callable[[Context], None]


def guarded(
    fn: Callable[[Any, Context], Awaitable[Any]],
    component: str,
    check: CallerCheck | None = None,
) -> Callable[[Any, Context], Awaitable[Any]]:
    @functools.wraps(fn)
    async def handler(request: Any, context: Context) -> Any:
        try:
            if check is not None:
                check(context)
            if isinstance(request, Malformed):
                raise request.to_error()
            return await fn(request, context)
        except ApiError as exc:
            await context.abort_with_status(exc.to_status())
        except Exception:
            log.exception("request failed", component=component, method=fn.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error; see the {component} log"
            )
        raise AssertionError("unreachable")

    return handler


def unary(
    fn: Callable[[Any, Context], Awaitable[Any]],
    request: type[Message],
    component: str,
    check: CallerCheck | None = None,
) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        guarded(fn, component, check),
        request_deserializer=parser(request),
        response_serializer=serialize,
    )
