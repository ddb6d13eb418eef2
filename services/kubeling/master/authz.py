"""Authorization of every RPC the master serves, from the caller's certificate.

The identity is what the TLS handshake verified (common/identity.py): the
certificate's CN is the user, its O the groups, the groups decide the role:

- admin (system:masters): everything.
- edit: read everything; write namespaced kinds; Pods Logs, Exec (and
  ExecStream, Attach, PortForward: `pods/exec`, `pods/attach`, `pods/portforward`)
  and Bind. No
  Node or Namespace writes, no bootstrap tokens, no user certificates.
- view: Get, List and Watch (and Pods/Top, usage figures) only (not Logs, Exec,
  Attach or PortForward: they reach into containers),
  and not Secrets (as Kubernetes' view role: reading them would be escalation).
- node (system:node:NAME), Kubernetes' Node authorizer with NodeRestriction:
  read Nodes, Services, EndpointSlices, Namespaces; write only its own Node (and
  then not spec.podCIDR(s), which come from the master's IPAM, not taints on
  update, not labels under node-restriction.kubernetes.io/ or
  node-role.kubernetes.io/); Pods only through a `spec.nodeName=NAME` List/Watch
  and Get, UpdateStatus, Delete of pods bound to it; its own Lease in
  kube-node-lease; Events Create/Update/Get/List; ConfigMaps and Secrets only
  those a pod bound to it refers to (volumes, projected sources, env, envFrom):
  Get by name, and List/Watch in the namespace with `metadata.name=NAME` (the
  kubelet's per-object watch). PersistentVolumeClaims likewise (those its pods
  mount). PersistentVolumes: Get of one bound to a claim a pod of the node mounts,
  or whose nodeAffinity names the node (`spec.nodeName`, see api/kinds.py);
  List/Watch only with the field selector `spec.nodeName=NAME`; Update only of
  such a PV of its own and only to remove the `kubeling.io/local-path-cleanup`
  finalizer (the kubelet removed the directory, kubelet/localpath.py).
- proxy (system:kube-proxy:NAME): read Services, EndpointSlices, Nodes; write Events.
- dns (kubeling:dns, `kubeling user add kube-dns --role dns`): read Services,
  EndpointSlices and Namespaces only (what kubeling-dns answers from).

A caller without a certificate (the join port) may only call Certificates/Join;
anything else is UNAUTHENTICATED. A refusal is PERMISSION_DENIED naming the
identity, the verb and the resource, and why. A master run without TLS (loopback
only, asked for with --insecure) treats every caller as the local admin.

Handlers are wrapped as master/limits.py wraps them; the decision is made before
the handler runs, on the parsed request (a request that does not parse is let
through to its handler, which answers INVALID_ARGUMENT without doing anything,
once the caller's role may call the method at all).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc
import structlog
from google.protobuf.message import Message

from kubeling.api import storage as st
from kubeling.api.errors import ApiError
from kubeling.api.kinds import (
    CONFIG_MAP,
    ENDPOINT_SLICE,
    EVENT,
    LEASE,
    NAMESPACE,
    NODE,
    PERSISTENT_VOLUME,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    SECRET,
    SERVICE,
    Kind,
    pv_node,
)
from kubeling.api.selectors import EQUALS
from kubeling.common import identity
from kubeling.common.handlers import Context, Malformed
from kubeling.common.identity import Identity
from kubeling.master.registry import Registry
from kubeling.v1 import core_pb2, storage_pb2

log = structlog.get_logger(__name__)

NODE_LEASE_NAMESPACE = "kube-node-lease"
# Labels a node may not give itself (NodeRestriction): they steer workloads to it.
PROTECTED_LABEL_PREFIXES = ("node-restriction.kubernetes.io/", "node-role.kubernetes.io/")
_PROTECTED_DOMAINS = tuple(p.rstrip("/") for p in PROTECTED_LABEL_PREFIXES)

READ = frozenset({"get", "list", "watch"})
# gRPC method -> (verb, subresource), as Kubernetes names them.
VERBS: dict[str, tuple[str, str]] = {
    "Create": ("create", ""),
    "Get": ("get", ""),
    "List": ("list", ""),
    "Watch": ("watch", ""),
    "Update": ("update", ""),
    "UpdateStatus": ("update", "status"),
    "Delete": ("delete", ""),
    "Logs": ("get", "log"),
    "Exec": ("create", "exec"),
    "ExecStream": ("create", "exec"),
    "Attach": ("create", "attach"),
    "PortForward": ("create", "portforward"),
    "Top": ("get", ""),
    "Bind": ("create", "binding"),
}
_HOW_TO_AUTHENTICATE = (
    "no client certificate: this port serves only Certificates/Join without one; "
    "use a credential from `kubeling user add` or the master's admin.conf"
)


@dataclass(frozen=True)
class Request:
    """What a call asks to do: verb and resource, and the object's name."""

    verb: str
    resource: str  # "pods", "pods/exec", "certificates/users", ...
    namespace: str = ""
    name: str = ""

    def describe(self) -> str:
        text = self.resource
        if self.name:
            text += f' "{self.name[:253]}"'
        if self.namespace:
            text += f' in namespace "{self.namespace[:63]}"'
        return text


def denial(caller: Identity, request: Request, reason: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        f"user {caller} cannot {request.verb} {request.describe()}: {reason}",
    )


def unauthenticated() -> ApiError:
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, _HOW_TO_AUTHENTICATE)


Check = Callable[[Identity, Any], None]


class Authorizer:
    """Wraps the master's handlers; `enabled` False (no TLS) lets everything pass."""

    def __init__(self, registries: dict[str, Registry], enabled: bool = True) -> None:
        self.registries = registries
        self.enabled = enabled

    # ------------------------------------------------------------------ wrapping

    def wrap_kind(
        self, kind: Kind, methods: dict[str, grpc.RpcMethodHandler]
    ) -> dict[str, grpc.RpcMethodHandler]:
        return {
            name: self._wrap(handler, functools.partial(self.check_kind, kind, name))
            for name, handler in methods.items()
        }

    def wrap_service(
        self, service: str, methods: dict[str, grpc.RpcMethodHandler]
    ) -> dict[str, grpc.RpcMethodHandler]:
        """Tokens and Certificates: not a kind's CRUD."""
        short = service.rpartition(".")[2]
        return {
            name: self._wrap(handler, functools.partial(self.check_service, short, name))
            for name, handler in methods.items()
        }

    def _wrap(self, handler: grpc.RpcMethodHandler, check: Check) -> grpc.RpcMethodHandler:
        if not self.enabled:
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, check),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, check),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._bidi(handler.stream_stream, check),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        raise TypeError("only unary, server-streaming and bidirectional methods are served")

    @staticmethod
    async def _decide(check: Check, request: Any, context: Context) -> None:
        """Abort the call unless it is allowed; a fault here refuses it too."""
        try:
            check(identity.identity_of(context), request)
            return
        except ApiError as refused:
            status = refused.to_status()
        except Exception:
            log.exception("authorization failed")
            status = ApiError(
                grpc.StatusCode.INTERNAL, "internal error authorizing the call; see the master log"
            ).to_status()
        await context.abort_with_status(status)

    @classmethod
    def _unary(
        cls, fn: Callable[[Any, Any], Awaitable[Any]], check: Check
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        @functools.wraps(fn)
        async def call(request: Any, context: Context) -> Any:
            await cls._decide(check, request, context)
            return await fn(request, context)

        return call

    @classmethod
    def _stream(
        cls, fn: Callable[[Any, Any], AsyncIterator[Any]], check: Check
    ) -> Callable[[Any, Any], AsyncIterator[Any]]:
        @functools.wraps(fn)
        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            await cls._decide(check, request, context)
            async for item in fn(request, context):
                yield item

        return call

    @classmethod
    def _bidi(
        cls, fn: Callable[[Any, Any], AsyncIterator[Any]], check: Check
    ) -> Callable[[Any, Any], AsyncIterator[Any]]:
        """A bidirectional stream is decided on its first message (its `start`
        names the pod), which the handler then receives as if unread."""

        @functools.wraps(fn)
        async def call(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            try:
                first = await anext(requests)
            except StopAsyncIteration:
                first = None
            start = first
            parsed = first is not None and not isinstance(first, Malformed)
            if parsed and first.WhichOneof("kind") == "start":
                start = first.start
            await cls._decide(check, start, context)

            async def replayed() -> AsyncIterator[Any]:
                if first is None:
                    return
                yield first
                async for request in requests:
                    yield request

            async for item in fn(replayed(), context):
                yield item

        return call

    # ------------------------------------------------------------------ services

    def check_service(self, service: str, method: str, caller: Identity, request: Any) -> None:
        if service == "Certificates" and method == "Join":
            return  # the bootstrap token is the credential (master/certificates.py)
        if not caller.authenticated:
            raise unauthenticated()
        role = caller.role
        if service == "Tokens":
            what = Request({"Create": "create", "List": "list"}.get(method, "delete"), "tokens")
            if role != identity.ADMIN:
                raise denial(caller, what, "bootstrap tokens are for admins only")
            return
        if method == "IssueUser":
            if role != identity.ADMIN:
                raise denial(
                    caller, Request("create", "certificates/users"), "only an admin issues users"
                )
            return
        if method == "Renew" and not role:
            raise denial(
                caller, Request("create", "certificates/renewal"), "the identity has no role"
            )

    # --------------------------------------------------------------------- kinds

    def check_kind(self, kind: Kind, method: str, caller: Identity, request: Any) -> None:
        if not caller.authenticated:
            raise unauthenticated()
        verb, sub = VERBS.get(method, (method.lower(), ""))
        what = Request(verb, kind.plural + (f"/{sub}" if sub else ""))
        role = caller.role
        if role == identity.ADMIN:
            return
        if role == identity.EDIT:
            if verb in READ and not sub:
                return
            if sub in ("log", "exec", "attach", "portforward", "binding"):
                return
            if not kind.namespaced:
                raise denial(caller, self._named(kind, what, request),
                             f"the edit role may not change {kind.plural}")  # fmt: skip
            return
        if role == identity.VIEW:
            if kind is SECRET:
                raise denial(caller, self._named(kind, what, request),
                             "the view role may not read secrets")  # fmt: skip
            if verb in READ and not sub:
                return
            reason = (
                "the view role may not reach into containers"
                if sub in ("log", "exec", "attach", "portforward")
                else "the view role is read only"
            )  # fmt: skip
            raise denial(caller, self._named(kind, what, request), reason)
        if role == identity.DNS:
            if verb in READ and not sub and kind in (SERVICE, ENDPOINT_SLICE, NAMESPACE):
                return
            reason = "the cluster DNS reads Services, EndpointSlices and Namespaces only"
            raise denial(caller, self._named(kind, what, request), reason)
        if role == identity.PROXY:
            if verb in READ and not sub and kind in (SERVICE, ENDPOINT_SLICE, NODE):
                return
            if kind is EVENT and verb in ("create", "update"):
                return
            raise denial(caller, self._named(kind, what, request),
                         "a node proxy reads Services, EndpointSlices and Nodes only")  # fmt: skip
        if role == identity.NODE:
            self._node(kind, method, caller, what, request)
            return
        raise denial(caller, self._named(kind, what, request), "the identity has no role")

    # --------------------------------------------------------------------- nodes

    def _named(self, kind: Kind, what: Request, request: Any) -> Request:
        """`what` with the namespace and name the request names (if it parsed)."""
        namespace, name = _target(kind, request)
        scoped = (namespace or "default") if kind.namespaced and name else namespace
        return Request(what.verb, what.resource, scoped if kind.namespaced else "", name)

    def _node(self, kind: Kind, method: str, caller: Identity, what: Request, request: Any) -> None:
        own = caller.node_name
        named = self._named(kind, what, request)

        def deny(reason: str) -> ApiError:
            return denial(caller, named, reason)

        verb, sub = what.verb, what.resource.partition("/")[2]
        if kind in (SERVICE, ENDPOINT_SLICE, NAMESPACE) or (kind is NODE and verb in READ):
            if verb in READ:
                return
            raise deny(f"a node may only read {kind.plural}")
        parsed = not isinstance(request, Malformed)
        if kind is NODE:
            if parsed and named.name != own:
                raise deny("a node may change only its own Node")
            if parsed and method in ("Create", "Update"):
                self._node_spec(cast(core_pb2.Node, getattr(request, kind.request_field)),
                                method, deny)  # fmt: skip
            return
        if kind is POD:
            if method in ("List", "Watch"):
                if parsed and not self._selects_node(request.field_selector, own):
                    raise deny(
                        f"a node lists and watches only its own pods (field selector "
                        f"spec.nodeName={own})"
                    )
                return
            if method in ("Get", "UpdateStatus", "Delete"):
                if parsed and self._pod_node(named) != own:
                    raise deny("the pod is not bound to this node")
                return
            raise deny("a node may only read, update the status of, and delete its own pods")
        if kind is LEASE:
            if verb in READ - {"get"} or sub:
                raise deny("a node may only get and write its own Lease")
            if parsed and (named.namespace, named.name) != (NODE_LEASE_NAMESPACE, own):
                raise deny(f'a node may use only its own Lease ("{own}" in {NODE_LEASE_NAMESPACE})')
            return
        if kind is EVENT:
            if method in ("Create", "Update", "Get", "List"):
                return
            raise deny("a node may create, update, get and list events only")
        if kind in (CONFIG_MAP, SECRET, PERSISTENT_VOLUME_CLAIM):
            self._node_pod_reference(kind, method, own, named, request, parsed, deny)
            return
        if kind is PERSISTENT_VOLUME:
            self._node_volume(method, own, named, request, parsed, deny)
            return
        raise deny(f"a node has no business with {kind.plural}")

    def _node_volume(
        self,
        method: str,
        own: str,
        named: Request,
        request: Any,
        parsed: bool,
        deny: Callable[[str], ApiError],
    ) -> None:
        """PVs of this node (local volumes) or mounted by its pods; the only write is
        dropping the local-path cleanup finalizer of its own PV."""
        if method in ("List", "Watch"):
            if parsed and not self._selects_field(PERSISTENT_VOLUME, request.field_selector,
                                                  "spec.nodeName", own):  # fmt: skip
                raise deny(
                    "a node lists and watches only the persistentvolumes on it (field "
                    f"selector spec.nodeName={own})"
                )
            return
        if method not in ("Get", "Update"):
            raise deny("a node may only read persistentvolumes and finish their cleanup")
        if not parsed:
            return
        try:
            stored = cast(
                storage_pb2.PersistentVolume,
                self.registries[PERSISTENT_VOLUME.name].get("", named.name),
            )
        except ApiError:
            if method == "Get":
                raise deny("no such persistentvolume for this node") from None
            return  # the update answers NOT_FOUND
        on_node = pv_node(stored) == own
        if method == "Get":
            if on_node or self._mounted_here(stored, own):
                return
            raise deny("the persistentvolume is neither on this node nor used by its pods")
        if not on_node:
            raise deny("a node may change only the persistentvolumes on it")
        new = cast(storage_pb2.PersistentVolume, getattr(request, PERSISTENT_VOLUME.request_field))
        before = [f for f in stored.metadata.finalizers if f != st.LOCAL_PATH_CLEANUP_FINALIZER]
        if (
            list(new.metadata.finalizers) != before
            or new.spec != stored.spec
            or dict(new.metadata.labels) != dict(stored.metadata.labels)
            or dict(new.metadata.annotations) != dict(stored.metadata.annotations)
            or list(new.metadata.owner_references) != list(stored.metadata.owner_references)
        ):
            raise deny(
                f"a node may only remove the {st.LOCAL_PATH_CLEANUP_FINALIZER} finalizer "
                "of a persistentvolume"
            )

    def _mounted_here(self, pv: storage_pb2.PersistentVolume, own: str) -> bool:
        ref = pv.spec.claim_ref
        if not ref.name:
            return False
        pods, _, _ = self.registries[POD.name].list_objects(
            ref.namespace or "default", field_selector=f"spec.nodeName={own}"
        )
        return any(
            ref.name in pod_references(cast(core_pb2.Pod, p), PERSISTENT_VOLUME_CLAIM) for p in pods
        )

    def _selects_field(self, kind: Kind, field_selector: str, field: str, value: str) -> bool:
        try:
            _, fields = self.registries[kind.name].selectors("", field_selector)
        except ApiError:
            return False
        return any(t.field == field and t.op == EQUALS and t.value == value for t in fields.terms)

    def _node_spec(self, node: core_pb2.Node, method: str, deny: Callable[[str], ApiError]) -> None:
        """NodeRestriction on the Node a node writes: on Create as sent, on Update
        compared with the stored one."""
        if method == "Create":
            if node.spec.pod_cidr or node.spec.pod_cidrs:
                raise deny(
                    "a node may not set its own spec.podCIDR(s): pod ranges come from the "
                    "master's --cluster-cidr"
                )
            if protected := _protected_labels(node):
                raise deny(f"a node may not set the labels {', '.join(sorted(protected))}")
            return
        try:
            stored = cast(core_pb2.Node, self.registries[NODE.name].get("", node.metadata.name))
        except ApiError:
            return  # not there: the update itself answers NOT_FOUND
        if (node.spec.pod_cidr, list(node.spec.pod_cidrs)) != (
            stored.spec.pod_cidr,
            list(stored.spec.pod_cidrs),
        ):
            raise deny(
                "a node may not change its own spec.podCIDR(s): pod ranges come from the "
                "master's --cluster-cidr"
            )
        if list(node.spec.taints) != list(stored.spec.taints):
            raise deny("a node may not change its own spec.taints")
        if _protected_labels(node) != _protected_labels(stored):
            raise deny(
                "a node may not change its labels under " + " or ".join(PROTECTED_LABEL_PREFIXES)
            )

    def _node_pod_reference(
        self,
        kind: Kind,
        method: str,
        own: str,
        named: Request,
        request: Any,
        parsed: bool,
        deny: Callable[[str], ApiError],
    ) -> None:
        """A node reads a ConfigMap or Secret only while a pod bound to it refers
        to it, one object at a time (Kubernetes' Node authorizer)."""
        if method not in ("Get", "List", "Watch"):
            raise deny(f"a node may only read {kind.plural}")
        if not parsed:
            return
        name = named.name
        if method != "Get":
            name = self._selected_name(kind, request.field_selector)
            if not name or not request.namespace:
                raise deny(
                    f"a node lists and watches {kind.plural} one at a time: in a namespace, "
                    "with the field selector metadata.name=NAME"
                )
        namespace = named.namespace or request.namespace or "default"
        pods, _, _ = self.registries[POD.name].list_objects(
            namespace, field_selector=f"spec.nodeName={own}"
        )
        if not any(name in pod_references(cast(core_pb2.Pod, p), kind) for p in pods):
            raise deny(f"no pod bound to this node refers to {kind.name} {name!r}")

    def _selected_name(self, kind: Kind, field_selector: str) -> str:
        try:
            _, fields = self.registries[kind.name].selectors("", field_selector)
        except ApiError:
            return ""
        names = {t.value for t in fields.terms if t.field == "metadata.name" and t.op == EQUALS}
        return names.pop() if len(names) == 1 else ""

    def _selects_node(self, field_selector: str, own: str) -> bool:
        try:
            _, fields = self.registries[POD.name].selectors("", field_selector)
        except ApiError:
            return False  # the handler will say why; a node gets no unselected list
        return any(
            t.field == "spec.nodeName" and t.op == EQUALS and t.value == own for t in fields.terms
        )

    def _pod_node(self, named: Request) -> str | None:
        try:
            pod = cast(core_pb2.Pod, self.registries[POD.name].get(named.namespace, named.name))
        except ApiError:
            return None  # no such pod: not bound to this node either
        return pod.spec.node_name


def pod_references(pod: core_pb2.Pod, kind: Kind) -> set[str]:
    """Names of the ConfigMaps (or Secrets, or PersistentVolumeClaims) `pod` uses:
    volumes, projected sources, env valueFrom and envFrom of every container."""
    found: set[str] = set()
    if kind is PERSISTENT_VOLUME_CLAIM:
        return {
            v.persistent_volume_claim.claim_name
            for v in pod.spec.volumes
            if v.HasField("persistent_volume_claim")
        }
    is_cm = kind is CONFIG_MAP
    for volume in pod.spec.volumes:
        if is_cm and volume.HasField("config_map"):
            found.add(volume.config_map.name)
        if not is_cm and volume.HasField("secret"):
            found.add(volume.secret.secret_name)
        for source in volume.projected.sources:
            if is_cm and source.HasField("config_map"):
                found.add(source.config_map.name)
            if not is_cm and source.HasField("secret"):
                found.add(source.secret.name)
    for container in [*pod.spec.init_containers, *pod.spec.containers]:
        for env in container.env:
            ref = env.value_from
            if is_cm and ref.HasField("config_map_key_ref"):
                found.add(ref.config_map_key_ref.name)
            if not is_cm and ref.HasField("secret_key_ref"):
                found.add(ref.secret_key_ref.name)
        for env_from in container.env_from:
            if is_cm and env_from.HasField("config_map_ref"):
                found.add(env_from.config_map_ref.name)
            if not is_cm and env_from.HasField("secret_ref"):
                found.add(env_from.secret_ref.name)
    return found


def _protected_labels(node: core_pb2.Node) -> dict[str, str]:
    def protected(key: str) -> bool:
        domain = key.partition("/")[0] if "/" in key else ""
        return any(domain == d or domain.endswith("." + d) for d in _PROTECTED_DOMAINS)

    return {k: v for k, v in node.metadata.labels.items() if protected(k)}


def _target(kind: Kind, request: Any) -> tuple[str, str]:
    """(namespace, name) a parsed request names."""
    if isinstance(request, Malformed) or request is None:
        return "", ""
    field = kind.request_field
    descriptor = request.DESCRIPTOR
    found = descriptor.fields_by_name.get(field)
    # The object's field (a Namespace's "namespace"), not DeleteRequest.namespace.
    if found is not None and found.message_type is not None:
        obj: Message = getattr(request, field)
        meta = obj.metadata  # type: ignore[attr-defined]
        return str(meta.namespace), str(meta.name)
    namespace = str(request.namespace) if "namespace" in descriptor.fields_by_name else ""
    name = str(request.name) if "name" in descriptor.fields_by_name else ""
    return namespace, name
