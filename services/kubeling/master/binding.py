"""Pods/Bind: set a pending pod's spec.nodeName, once (the scheduler's write)."""

from __future__ import annotations

from typing import Any, cast

import grpc

from kubeling.api import errors
from kubeling.api.objects import clone, now
from kubeling.common import handlers
from kubeling.master.registry import Registry
from kubeling.v1 import core_pb2


class PodBinder:
    def __init__(self, pods: Registry, nodes: Registry) -> None:
        self._pods = pods
        self._nodes = nodes

    def methods(self) -> dict[str, Any]:
        return {"Bind": handlers.unary(self.bind, core_pb2.BindRequest, "master")}

    async def bind(self, request: core_pb2.BindRequest, context: Any) -> core_pb2.Pod:
        if not request.node_name:
            raise errors.bad_request("node_name", "Required value")
        self._nodes.get("", request.node_name)  # NOT_FOUND for an unknown node
        for _ in range(5):
            pod = cast(core_pb2.Pod, self._pods.get(request.namespace, request.name))
            if request.uid and request.uid != pod.metadata.uid:
                raise errors.conflict(
                    f"Precondition failed: UID in precondition: {request.uid}, "
                    f"UID in object meta: {pod.metadata.uid}"
                )
            if pod.spec.node_name:
                raise errors.ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f'pod {pod.metadata.name} is already assigned to node "{pod.spec.node_name}"',
                )
            if pod.metadata.HasField("deletion_timestamp"):
                raise errors.ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"pod {pod.metadata.name} is being deleted",
                )
            bound = clone(pod)
            bound.spec.node_name = request.node_name
            scheduled = next((c for c in bound.status.conditions if c.type == "PodScheduled"), None)
            if scheduled is None:
                scheduled = bound.status.conditions.add(type="PodScheduled")
            scheduled.status = "True"
            scheduled.reason = ""
            scheduled.message = ""
            scheduled.last_transition_time.CopyFrom(now())
            try:
                return cast(core_pb2.Pod, await self._pods.write_as_is(bound, pod))
            except errors.ApiError as exc:
                if exc.code != grpc.StatusCode.ABORTED:
                    raise
        raise errors.conflict(f"pod {request.name} keeps changing; try binding again")
