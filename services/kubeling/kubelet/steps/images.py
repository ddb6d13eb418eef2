"""Getting a container's image (used when a container starts; not a step itself).

Reads the container's image and pull policy and what the runtime has; pulls when
the policy asks for it. Returns the image reference to create the container from,
or None (with the container's waiting reason set) when there is none to use.
"""

from __future__ import annotations

import time

from kubeling.cri.api import pb
from kubeling.cri.errors import CRIError
from kubeling.kubelet.status import Waiting
from kubeling.kubelet.steps.base import NodeServices, PodContext
from kubeling.v1 import core_pb2


async def ensure_image(
    node: NodeServices, ctx: PodContext, spec: core_pb2.Container, sandbox: pb.PodSandboxConfig
) -> str | None:
    pod = ctx.spec
    waiting = ctx.waiting
    policy = spec.image_pull_policy or "IfNotPresent"
    try:
        present = await node.runtime.image_status(spec.image)
    except CRIError as exc:
        waiting[spec.name] = Waiting("ErrImagePull", exc.details)
        return None
    if present is not None and policy != "Always":
        return present.id or spec.image
    if policy == "Never":
        message = f'Container image "{spec.image}" is not present with pull policy of Never'
        waiting[spec.name] = Waiting("ErrImageNeverPull", message)
        node.recorder.record(pod, "Warning", "ErrImageNeverPull", message)
        return None
    node.recorder.record(pod, "Normal", "Pulling", f'Pulling image "{spec.image}"')
    # A pull may take minutes: other pods start meanwhile.
    ctx.lease.release()
    started = time.monotonic()
    try:
        ref = await node.runtime.pull_image(spec.image, sandbox)
    except CRIError as exc:
        message = f'Failed to pull image "{spec.image}": {exc.details}'
        if present is not None:
            # Air-gapped nodes (images imported at start, as k3s does): a manifest
            # saying `image: busybox` (pull policy Always) still runs with the image
            # the node has.
            node.recorder.record(
                pod, "Warning", "Failed", f"{message}; using the image present on the node"
            )
            return present.id or spec.image
        waiting[spec.name] = Waiting("ErrImagePull", message)
        node.recorder.record(pod, "Warning", "Failed", message)
        return None
    node.recorder.record(
        pod,
        "Normal",
        "Pulled",
        f'Successfully pulled image "{spec.image}" in {time.monotonic() - started:.3f}s',
    )
    return ref
