"""Container Runtime Interface: a typed gRPC client, the Runtime protocol and a fake."""

from kubeling.cri.errors import CRIError
from kubeling.cri.runtime import ExecResult, Runtime

__all__ = ["CRIError", "ExecResult", "Runtime"]
