"""CLI errors and the one-line, kubectl-style rendering of server errors."""

from __future__ import annotations

import re

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


# Connection failures that are TLS's doing: the handshake (or certificate checks) failed.
_TLS_FAILURE = re.compile(r"handshake|certificate|ssl|tsi_|hostname verification", re.IGNORECASE)
_HOW_TO_CONFIG = (
    "use a config from this cluster: --config PATH, $KUBELING_CONFIG or ~/.kubeling/config "
    "(the master writes DATA_DIR/admin.conf; `kubeling user add` makes more)"
)


def server_error(error: grpc.RpcError, server: str, context: str = "", source: str = "") -> str:
    """One line for an error the server (or the connection to it) returned.

    `context` names what was being done, e.g. 'error when creating "web.yaml"';
    `source` where the CLI's credentials came from (cli/config.py Target.source),
    for the errors that are about who the caller is.
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    using = f"; {source}" if source else ""
    if code == grpc.StatusCode.UNAVAILABLE:
        if _TLS_FAILURE.search(details):
            return (
                f"error: TLS with the kubeling server at {server} failed ({details}){using}; "
                f"the server's certificate must come from the CA in your config and name "
                f"the address you use: {_HOW_TO_CONFIG}"
            )
        if "Socket closed" in details or "Connection reset" in details:
            # A TLS server closes the connection on a client without a certificate
            # from its CA (or on plaintext), before any status can be sent.
            return (
                f"error: the kubeling server at {server} closed the connection ({details}); "
                f"it probably refused your credentials ({source or 'none'}): {_HOW_TO_CONFIG}"
            )
        return (
            f"error: cannot reach the kubeling server at {server} ({details}); "
            "is it running? Set the address with --server, $KUBELING_SERVER or ~/.kubeling/config"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return (
            f"error: the kubeling server at {server} does not know you ({details}){using}: "
            f"{_HOW_TO_CONFIG}"
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
    if code == grpc.StatusCode.PERMISSION_DENIED and source:
        # Not allowed for this identity: say whose credentials those were and what helps.
        return (
            f"Error from server ({label}): {prefix}{details} ({source}; "
            "an admin can give you a role that allows it: kubeling user add NAME --role edit|admin)"
        )
    return f"Error from server ({label}): {prefix}{details}"
