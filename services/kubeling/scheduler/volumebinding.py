"""The scheduler's VolumeBinding step (kube-scheduler's VolumeBinding plugin, cut
to what local volumes need): which nodes a pod's PersistentVolumeClaims allow,
and which claims wait for the pod's node.

- A claim that does not exist, or is being deleted, makes the pod unschedulable
  (`persistentvolumeclaim "NAME" not found`, Kubernetes' message).
- A bound claim whose PV has a nodeAffinity (a local-path volume: its node) limits
  the pod to the nodes matching it: the affinity is ANDed into the pod's own
  required node affinity, so the usual filter (and its cached per-signature
  result) does the work, and a pod that fits nowhere reports the affinity reason.
- An unbound claim of a WaitForFirstConsumer class whose volumes are provisioned
  here (local-path) fits every node. One of a class without such a provisioner
  (`kubernetes.io/no-provisioner`, static local PVs) fits the nodes where a free
  PV that suits it lives (the PVs' node affinities ORed; none: "node(s) didn't
  find available persistent volumes to bind"). Either way the claim is
  returned in `to_select`, and the scheduler writes the chosen node into its
  `volume.kubernetes.io/selected-node` annotation before it binds the pod (as
  kube-scheduler's PreBind does), which starts provisioning there
  (controllers/volumebinding.py). Choice: the scheduler sets the annotation,
  not the binder, because only the scheduler knows the node before the pod is
  bound, and a pod is never bound to a node its volume cannot be made on.
- An unbound claim of any other class (Immediate, or no class) makes the pod
  unschedulable until it is bound: "pod has unbound immediate
  PersistentVolumeClaims".

Everything here is pure: lookups are passed in, so it is tested without a master.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from kubeling.api import storage as st
from kubeling.api.objects import clone
from kubeling.v1 import core_pb2, storage_pb2

UNBOUND_IMMEDIATE = "pod has unbound immediate PersistentVolumeClaims"
MISSING_VOLUME = "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)"
NO_VOLUME = "node(s) didn't find available persistent volumes to bind"

ClaimLookup = Callable[[str, str], storage_pb2.PersistentVolumeClaim | None]
VolumeLookup = Callable[[str], storage_pb2.PersistentVolume | None]
ClassLookup = Callable[[str], storage_pb2.StorageClass | None]


@dataclass
class VolumeDecision:
    error: str = ""  # non-empty: no node fits, this is why
    affinities: list[core_pb2.NodeSelector] = field(default_factory=list)
    to_select: list[storage_pb2.PersistentVolumeClaim] = field(default_factory=list)


def claim_names(pod: core_pb2.Pod) -> list[str]:
    return [
        v.persistent_volume_claim.claim_name
        for v in pod.spec.volumes
        if v.HasField("persistent_volume_claim")
    ]


def check_volumes(
    pod: core_pb2.Pod,
    claims: ClaimLookup,
    volumes: VolumeLookup,
    classes: ClassLookup,
    all_volumes: Callable[[], list[storage_pb2.PersistentVolume]] = list,
) -> VolumeDecision:
    decision = VolumeDecision()
    namespace = pod.metadata.namespace
    for name in claim_names(pod):
        pvc = claims(namespace, name)
        if pvc is None:
            decision.error = f'persistentvolumeclaim "{name}" not found'
            return decision
        if pvc.metadata.HasField("deletion_timestamp"):
            decision.error = f'persistentvolumeclaim "{name}" is being deleted'
            return decision
        if pvc.spec.volume_name:
            pv = volumes(pvc.spec.volume_name)
            if pv is None:
                decision.error = MISSING_VOLUME
                return decision
            if pv.spec.HasField("node_affinity") and pv.spec.node_affinity.HasField("required"):
                decision.affinities.append(pv.spec.node_affinity.required)
            continue
        class_name = st.claim_class(pvc)
        sc = classes(class_name) if class_name else None
        if sc is not None and st.binding_mode(sc) == st.WAIT_FOR_FIRST_CONSUMER:
            if not st.provisions_here(sc):
                where = _static_candidates(pvc, all_volumes())
                if where is None:
                    decision.error = NO_VOLUME
                    return decision
                if where.node_selector_terms:
                    decision.affinities.append(where)
            decision.to_select.append(pvc)
            continue
        decision.error = UNBOUND_IMMEDIATE
        return decision
    return decision


def _static_candidates(
    pvc: storage_pb2.PersistentVolumeClaim, volumes: list[storage_pb2.PersistentVolume]
) -> core_pb2.NodeSelector | None:
    """Where a free PV for the claim is: None when there is none, an empty
    selector when one is usable anywhere, else its and the others' node terms."""
    fitting = [pv for pv in volumes if st.volume_fits(pvc, pv)]
    if not fitting:
        return None
    where = core_pb2.NodeSelector()
    for pv in fitting:
        terms = pv.spec.node_affinity.required.node_selector_terms
        if not terms:
            return core_pb2.NodeSelector()
        where.node_selector_terms.extend(terms)
    return where


def with_volume_affinity(
    pod: core_pb2.Pod, affinities: list[core_pb2.NodeSelector]
) -> core_pb2.Pod:
    """A copy of `pod` whose required node affinity also demands every selector in
    `affinities` (terms are ORed within a selector, selectors ANDed: the result's
    terms are the cross product, each term's requirements concatenated)."""
    if not affinities:
        return pod
    copy = clone(pod)
    node_affinity = copy.spec.affinity.node_affinity
    required = node_affinity.required_during_scheduling_ignored_during_execution
    selectors = list(affinities)
    if node_affinity.HasField("required_during_scheduling_ignored_during_execution"):
        selectors.insert(0, clone(required))
    combined: list[core_pb2.NodeSelectorTerm] = []
    for terms in itertools.product(*(s.node_selector_terms for s in selectors)):
        term = core_pb2.NodeSelectorTerm()
        for part in terms:
            term.match_expressions.extend(part.match_expressions)
            term.match_fields.extend(part.match_fields)
        combined.append(term)
    del required.node_selector_terms[:]
    required.node_selector_terms.extend(combined)
    return copy
