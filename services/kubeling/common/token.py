"""The join token: a shared secret a node presents to register with the master.

The master keeps it in a file (made on first start, mode 0600) and refuses
`Nodes/Create` without it; clients send it as `authorization: Bearer TOKEN` on
every call. It keeps machines from joining by accident or by guessing; it is not
authentication of the API as a whole (no TLS yet: see deploy/README.md).
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

HEADER = "authorization"
# The calls that need the token: registering a node.
GUARDED_METHODS = frozenset({"/kubeling.v1.Nodes/Create"})


def load_or_create(path: Path) -> str:
    """The token in `path`, made (random, 0600) when the file does not exist."""
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = f"{secrets.token_hex(3)}.{secrets.token_hex(8)}"  # kubeadm's shape
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


class RequireToken(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Rejects the guarded calls that do not carry the token (UNAUTHENTICATED)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method not in GUARDED_METHODS:
            return await continuation(details)
        sent = dict(details.invocation_metadata or ()).get(HEADER, "")
        if hmac.compare_digest(str(sent).encode(), self._expected):
            return await continuation(details)

        async def refuse(request: Any, context: Any) -> None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "joining needs the master's join token: kubeling-kubelet --token TOKEN "
                "(kubeling-master prints the join command)",
            )

        return grpc.unary_unary_rpc_method_handler(refuse)


class _SendToken(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, token: str) -> None:
        self._pair = (HEADER, f"Bearer {token}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._pair)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


def client_interceptors(token: str) -> list[Any]:
    return [_SendToken(token)] if token else []
