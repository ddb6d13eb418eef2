"""Who is calling: the identity in the caller's TLS client certificate.

Every kubeling certificate is signed by the cluster CA (common/pki.py), and its
subject is the identity, as in Kubernetes: the common name is the user, the
organizations are the groups. The groups decide the role:

    admin  O=system:masters        everything (the admin credential, the master)
    edit   O=kubeling:edit         read everything, write namespaced objects, Exec, Logs
    view   O=kubeling:view         read only
    node   O=system:nodes          CN=system:node:NAME: its Node, its Lease, its pods
    proxy  O=system:node-proxiers  CN=system:kube-proxy:NAME: read Services,
                                   EndpointSlices, Nodes

The master's own client identity (`kubeling:master`, an admin) is the only one a
kubelet's API accepts. A caller without a certificate (only possible on the
master's join port) is `system:anonymous`; a server that runs without TLS (asked
for explicitly, loopback only) treats every caller as the local admin.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

GROUP_MASTERS = "system:masters"
GROUP_EDIT = "kubeling:edit"
GROUP_VIEW = "kubeling:view"
# The cluster DNS server (kubeling-dns): reads Services, EndpointSlices, Namespaces.
GROUP_DNS = "kubeling:dns"
GROUP_NODES = "system:nodes"
GROUP_PROXIES = "system:node-proxiers"
NODE_PREFIX = "system:node:"
PROXY_PREFIX = "system:kube-proxy:"
MASTER_USER = "kubeling:master"
# Names a user certificate may not take: they belong to the system's own identities.
RESERVED_PREFIXES = ("system:", "kubeling:")

ADMIN, EDIT, VIEW, NODE, PROXY, ANONYMOUS_ROLE = "admin", "edit", "view", "node", "proxy", ""
DNS = "dns"
ROLE_GROUPS = {ADMIN: GROUP_MASTERS, EDIT: GROUP_EDIT, VIEW: GROUP_VIEW, DNS: GROUP_DNS}


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...] = ()

    @property
    def authenticated(self) -> bool:
        return self.user != ANONYMOUS.user

    @property
    def role(self) -> str:
        """admin, edit, view, dns, node, proxy, or "" (anonymous, or no role)."""
        if GROUP_MASTERS in self.groups:
            return ADMIN
        if GROUP_NODES in self.groups and self.user.startswith(NODE_PREFIX):
            return NODE
        if GROUP_PROXIES in self.groups and self.user.startswith(PROXY_PREFIX):
            return PROXY
        if GROUP_DNS in self.groups:
            return DNS  # the narrowest role a certificate names wins over edit/view
        if GROUP_EDIT in self.groups:
            return EDIT
        if GROUP_VIEW in self.groups:
            return VIEW
        return ANONYMOUS_ROLE

    @property
    def node_name(self) -> str:
        """The node a node's or a node proxy's identity is for ("" for others)."""
        for prefix in (NODE_PREFIX, PROXY_PREFIX):
            if self.user.startswith(prefix) and self.role in (NODE, PROXY):
                return self.user.removeprefix(prefix)
        return ""

    def __str__(self) -> str:
        return f'"{self.user}"' + (f" (groups {', '.join(self.groups)})" if self.groups else "")


ANONYMOUS = Identity("system:anonymous", ("system:unauthenticated",))
# Every caller of a server running without TLS (explicitly, on loopback only).
LOCAL_ADMIN = Identity("system:admin", (GROUP_MASTERS,))


def node_identity(node_name: str) -> Identity:
    return Identity(NODE_PREFIX + node_name, (GROUP_NODES,))


def proxy_identity(node_name: str) -> Identity:
    return Identity(PROXY_PREFIX + node_name, (GROUP_PROXIES,))


MASTER = Identity(MASTER_USER, (GROUP_MASTERS,))


@functools.lru_cache(maxsize=1024)
def identity_from_pem(cert_pem: bytes) -> Identity:
    """The identity in a (CA-verified) certificate: CN and O of its subject."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    groups = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if not names:
        return ANONYMOUS
    return Identity(str(names[0].value), tuple(str(g.value) for g in groups))


def identity_of(context: Any) -> Identity:
    """The caller of a gRPC call (servicer context): from the peer certificate that
    the TLS handshake verified against the cluster CA; ANONYMOUS without one."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return ANONYMOUS
    return identity_from_pem(bytes(pems[0]))
