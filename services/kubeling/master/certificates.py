"""kubeling.v1.Certificates: certificates from the cluster CA (master/cluster_ca.py).

- Join (kubeadm's TLS bootstrap, on the join port, no client certificate needed):
  a valid bootstrap token (common/token.py) buys one certificate for a node's
  kubelet (role "node": CN=system:node:NAME, O=system:nodes) or its kube-proxy
  (role "proxy": CN=system:kube-proxy:NAME, O=system:node-proxiers). The master,
  not the requester, decides the subject: the CSR must ask for exactly it. Both are
  for server and client use, with SANs NAME and the node's validated addresses.
- Renew: an authenticated caller gets a new certificate for its own subject (the
  CSR must carry it), so a node rotates its key before the old certificate ends.
- IssueUser (admin only; master/authz.py checks that too): a user certificate for
  a role (admin, edit, view), `kubeling user add`.

Addresses follow the Node address rules (master/validation/core.py): no
unspecified, multicast or zoned address, loopback only when the master itself
serves only on loopback. The token and keys are never logged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from kubeling.api import naming
from kubeling.api.errors import ApiError, FieldViolation, invalid
from kubeling.common import handlers, identity, pki
from kubeling.common.handlers import Context
from kubeling.common.targets import MASTER_NAMES
from kubeling.common.token import TokenRefused, TokenStore
from kubeling.master.cluster_ca import ClusterCa
from kubeling.master.validation.core import node_addresses, node_loopback_addresses
from kubeling.v1 import certificates_pb2, core_pb2

log = structlog.get_logger(__name__)

SERVICE_NAME: str = certificates_pb2.DESCRIPTOR.services_by_name["Certificates"].full_name
# What a joining kubelet or proxy becomes: (CN prefix, group).
JOIN_ROLES = {
    identity.NODE: (identity.NODE_PREFIX, identity.GROUP_NODES),
    identity.PROXY: (identity.PROXY_PREFIX, identity.GROUP_PROXIES),
}
_MAX_ADDRESSES = 16
# X.509's upper bound for a common name (cryptography enforces it).
_MAX_COMMON_NAME = 64


def _timestamp(cert_pem: bytes) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(pki.cert_info(cert_pem).not_after)
    return stamp


# Names no node or user certificate may carry: clients accept a certificate with one
# of them as a master's (a master list checks "kubernetes", a unix socket "localhost").
MASTER_ONLY_NAMES = frozenset({"localhost", *MASTER_NAMES})


def node_name_errors(field: str, name: str) -> list[FieldViolation]:
    errors = [FieldViolation(field, f"Invalid value: {name!r}: {e}") for e in
              naming.dns1123_subdomain(name)]  # fmt: skip
    if name in MASTER_ONLY_NAMES:
        errors.append(FieldViolation(field, f"Invalid value: {name!r}: reserved for the masters"))
    return errors


def address_errors(addresses: Sequence[str], loopback_allowed: bool) -> list[FieldViolation]:
    """The Node address rules, for the IP SANs a node asks for."""
    if len(addresses) > _MAX_ADDRESSES:
        return [
            FieldViolation("addresses", f"Too many: {len(addresses)}: at most {_MAX_ADDRESSES}")
        ]
    as_node = [core_pb2.NodeAddress(type="InternalIP", address=a) for a in addresses]
    errs = node_addresses(as_node)
    if not loopback_allowed:
        errs += node_loopback_addresses(as_node)
    # The Node rules name the Node's field; here it is the request's.
    return [
        FieldViolation(
            v.field.replace("status.addresses", "addresses").removesuffix(".address"),
            v.description,
        )
        for v in errs
    ]


def _signed(sign: Callable[[], bytes]) -> bytes:
    """The certificate `sign` makes; a CSR it refuses is the caller's error."""
    try:
        return sign()
    except (pki.PkiError, ValueError) as exc:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"csr: {exc}") from None


class CertificatesService:
    def __init__(
        self, ca: ClusterCa | None, tokens: TokenStore | None, loopback_only: bool = False
    ) -> None:
        """`ca` None: the master runs without TLS and signs nothing."""
        self.ca = ca
        self.tokens = tokens
        self.loopback_only = loopback_only

    def methods(self) -> dict[str, grpc.RpcMethodHandler]:
        return {
            "Join": handlers.unary(self.join, certificates_pb2.JoinRequest, "master"),
            "Renew": handlers.unary(self.renew, certificates_pb2.RenewRequest, "master"),
            "IssueUser": handlers.unary(
                self.issue_user, certificates_pb2.IssueUserRequest, "master"
            ),
        }

    def _ca(self) -> ClusterCa:
        if self.ca is None:
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this master runs without TLS (--insecure): it issues no certificates",
            )
        return self.ca

    def _response(self, ca: ClusterCa, cert: bytes) -> certificates_pb2.CertificateResponse:
        return certificates_pb2.CertificateResponse(
            certificate=cert, ca=ca.ca_pem, not_after=_timestamp(cert)
        )

    def _sign_node(
        self,
        ca: ClusterCa,
        what: str,
        csr: bytes,
        role: str,
        node_name: str,
        addresses: Sequence[str],
    ) -> bytes:
        prefix, group = JOIN_ROLES[role]
        errs = node_name_errors("node_name", node_name)
        if not errs and len(prefix + node_name) > _MAX_COMMON_NAME:
            errs.append(FieldViolation(
                "node_name", f"Too long: {prefix}NAME must fit a certificate's common "
                f"name ({_MAX_COMMON_NAME} characters)"))  # fmt: skip
        errs += address_errors(addresses, self.loopback_only)
        if errs:
            raise invalid(what, node_name[:253], errs)
        return _signed(
            lambda: ca.sign(
                csr, prefix + node_name, (group,), server=True,
                dns_names=[node_name], ips=list(addresses),
            )
        )  # fmt: skip

    async def join(
        self, request: certificates_pb2.JoinRequest, context: Context
    ) -> certificates_pb2.CertificateResponse:
        ca = self._ca()
        if self.tokens is None:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "this master takes no joins")
        try:
            token_id = await self.tokens.admit(request.token.strip())
        except TokenRefused as refused:
            log.info("join refused", role=request.role, node=request.node_name[:253],
                     reason=str(refused))  # fmt: skip
            raise ApiError(grpc.StatusCode.UNAUTHENTICATED, str(refused)) from None
        if request.role not in JOIN_ROLES:
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'role: Unsupported value: "{request.role[:40]}": supported values: '
                '"node", "proxy"',
            )
        cert = self._sign_node(
            ca, "JoinRequest", request.csr, request.role, request.node_name, request.addresses
        )
        log.info("joined", role=request.role, node=request.node_name, token_id=token_id,
                 addresses=list(request.addresses))  # fmt: skip
        return self._response(ca, cert)

    async def renew(
        self, request: certificates_pb2.RenewRequest, context: Context
    ) -> certificates_pb2.CertificateResponse:
        ca = self._ca()
        caller = identity.identity_of(context)
        role = caller.role
        if role in JOIN_ROLES:
            cert = self._sign_node(
                ca, "RenewRequest", request.csr, role, caller.node_name, request.addresses
            )
        elif role in identity.ROLE_GROUPS and caller.authenticated:
            # Users (and the master) keep exactly their subject; no server use.
            cert = _signed(lambda: ca.sign(request.csr, caller.user, caller.groups, server=False))
        else:
            raise ApiError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"user {caller} has no role whose certificate can be renewed",
            )
        log.info("certificate renewed", user=caller.user)
        return self._response(ca, cert)

    async def issue_user(
        self, request: certificates_pb2.IssueUserRequest, context: Context
    ) -> certificates_pb2.CertificateResponse:
        ca = self._ca()
        caller = identity.identity_of(context)
        if caller.role != identity.ADMIN:
            raise ApiError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"user {caller} cannot create certificates/users: only an admin issues users",
            )
        name, role = request.name, request.role
        errs: list[FieldViolation] = []
        if not name:
            errs.append(FieldViolation("name", "Required value"))
        elif name.startswith(identity.RESERVED_PREFIXES):
            errs.append(FieldViolation(
                "name", f"Invalid value: {name[:80]!r}: names starting with "
                f"{' or '.join(identity.RESERVED_PREFIXES)} belong to the system"))  # fmt: skip
        elif len(name) > _MAX_COMMON_NAME:
            errs.append(FieldViolation("name", f"Too long: at most {_MAX_COMMON_NAME} characters"))
        elif name in MASTER_ONLY_NAMES:
            errs.append(
                FieldViolation("name", f"Invalid value: {name!r}: reserved for the masters")
            )
        if role not in identity.ROLE_GROUPS:
            errs.append(FieldViolation(
                "role", f'Unsupported value: "{role[:40]}": supported values: '
                + ", ".join(f'"{r}"' for r in identity.ROLE_GROUPS)))  # fmt: skip
        if errs:
            raise invalid("IssueUserRequest", name, errs)
        group = identity.ROLE_GROUPS[role]
        cert = _signed(lambda: ca.sign(request.csr, name, (group,), server=False))
        log.info("user certificate issued", user=name, role=role, by=caller.user)
        return self._response(ca, cert)
