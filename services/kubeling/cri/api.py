"""The CRI v1 protobuf messages, imported from one place.

Everything in kubeling uses ``pb`` from here, so swapping the PyPI stubs for a
vendored, build-compiled api.proto is a one-line change.
"""

from __future__ import annotations

from cri_api.v1 import api_pb2 as pb

__all__ = ["IMAGE_SERVICE", "RUNTIME_SERVICE", "pb"]

# Full gRPC service names; the wire paths are /<service>/<Method>.
RUNTIME_SERVICE = "runtime.v1.RuntimeService"
IMAGE_SERVICE = "runtime.v1.ImageService"
