"""The one error type of the CRI layer, shared by the gRPC client and the fake."""

from __future__ import annotations

import grpc


class CRIError(RuntimeError):
    """A CRI call failed; ``code`` is the gRPC status code the runtime answered with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @property
    def not_found(self) -> bool:
        return bool(self.code == grpc.StatusCode.NOT_FOUND)

    @property
    def unavailable(self) -> bool:
        return bool(self.code == grpc.StatusCode.UNAVAILABLE)
