"""API errors as gRPC statuses, with google.rpc.BadRequest details naming each field.

The server raises `ApiError`; `to_status` turns it into a rich status, and the
client side `describe_rpc_error` turns any status back into one readable line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

_MAX_MESSAGE = 2000
_MAX_VIOLATIONS = 20
_MAX_FIELD = 200
_MAX_DESCRIPTION = 300


def shorten(text: str, limit: int) -> str:
    """Cut text that would be too long to show, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 30]}... ({len(text) - limit + 30} more characters)"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str

    def __str__(self) -> str:
        return f"{self.field}: {self.description}"


@dataclass
class ApiError(Exception):
    code: grpc.StatusCode
    message: str
    violations: list[FieldViolation] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> grpc.Status:
        # Statuses travel in HTTP/2 trailers, which clients cap (16 KiB by default):
        # hostile input (a 100 kB name) must not turn a clear error into a broken call.
        status = status_pb2.Status(
            code=self.code.value[0], message=shorten(self.message, _MAX_MESSAGE)
        )
        if self.violations:
            shown = self.violations[:_MAX_VIOLATIONS]
            detail = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=shorten(v.field, _MAX_FIELD),
                        description=shorten(v.description, _MAX_DESCRIPTION),
                    )
                    for v in shown
                ]
            )
            status.details.add().Pack(detail)
        return rpc_status.to_status(status)


def invalid(kind: str, name: str, violations: list[FieldViolation]) -> ApiError:
    shown = "; ".join(
        f"{shorten(v.field, 100)}: {shorten(v.description, 200)}" for v in violations[:10]
    )
    if len(violations) > 10:
        shown += f"; and {len(violations) - 10} more"
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f'{kind} "{shorten(name, 80)}" is invalid: {shown}',
        violations,
    )


def not_found(what: str) -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, f"{what} not found")


def already_exists(what: str) -> ApiError:
    return ApiError(grpc.StatusCode.ALREADY_EXISTS, f"{what} already exists")


def conflict(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.ABORTED, message)


def bad_request(field_name: str, description: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{field_name}: {description}",
        [FieldViolation(field_name, description)],
    )


def field_violations(error: grpc.aio.AioRpcError | grpc.RpcError) -> list[FieldViolation]:
    """The BadRequest field violations carried by an error, if any."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return []
    found: list[FieldViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found += [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return found


def describe_rpc_error(error: grpc.RpcError) -> str:
    """One readable line for any error a server returned."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach the server: {details}"
    return f"{code.name}: {details}"


assert grpc.StatusCode.INVALID_ARGUMENT.value[0] == code_pb2.INVALID_ARGUMENT
