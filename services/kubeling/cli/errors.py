"""CLI errors and the one-line, kubectl-style rendering of server errors."""

from __future__ import annotations

import grpc

from kubeling.api.errors import field_violations

# gRPC codes as the Kubernetes status reasons kubectl prints ("Error from server (NotFound)").
_REASONS = {
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.ABORTED: "Conflict",
    grpc.StatusCode.INVALID_ARGUMENT: "BadRequest",
    grpc.StatusCode.PERMISSION_DENIED: "Forbidden",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthorized",
    grpc.StatusCode.DEADLINE_EXCEEDED: "Timeout",
    grpc.StatusCode.OUT_OF_RANGE: "Expired",
}


class CliError(Exception):
    """A user-facing failure: printed as one line, no traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def reason(code: grpc.StatusCode) -> str:
    return _REASONS.get(code) or "".join(part.capitalize() for part in code.name.split("_"))


def server_error(error: grpc.RpcError, server: str, context: str = "") -> str:
    """One line for an error the server (or the connection to it) returned.

    `context` names what was being done, e.g. 'error when creating "web.yaml"'.
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    if code == grpc.StatusCode.UNAVAILABLE:
        return (
            f"error: cannot reach the kubeling server at {server} ({details}); "
            "is it running? Set the address with --server, $KUBELING_SERVER or ~/.kubeling/config"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"error: the kubeling server at {server} did not answer in time ({details})"
    violations = field_violations(error) if code == grpc.StatusCode.INVALID_ARGUMENT else []
    label = reason(code)
    if violations:
        label = "Invalid"
        # The server's message may shorten long descriptions; the details carry them whole.
        head, marker, _ = details.partition(" is invalid")
        if marker:
            details = f"{head}{marker}: {'; '.join(str(v) for v in violations)}"
        else:
            missing = [str(v) for v in violations if str(v) not in details]
            details = "; ".join([details, *missing])
    prefix = f"{context}: " if context else ""
    return f"Error from server ({label}): {prefix}{details}"
