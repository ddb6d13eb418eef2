"""The nftables rules for services: the fixed skeleton of the table, and what each
service port adds to it. Pure functions; `proxier.py` diffs and applies them.

Layout (one `ip kubeling` table, after upstream kube-proxy's nftables mode):
- `services` (jumped to from nat prerouting and output) looks up
  `daddr . l4proto . dport` in the verdict map `service-ips`, and for the node's own
  addresses `l4proto . dport` in `service-nodeports`;
- a service port with N ready endpoints (1 <= N <= LB_MAX, no session affinity) owns
  no chain: its `service-ips` element is `goto lb-N`, and its endpoints are N
  elements `VIP . proto . port . i : EPIP . EPPORT` (i = 0..N-1, endpoints in sorted
  order) of ONE hash map, `service-endpoints`. The shared chain `lb-N` picks one:
  `dnat ip to ip daddr . meta l4proto . th dport . numgen random mod N map
  @service-endpoints` (uniform: numgen draws each index with probability 1/N);
- NodePorts: `service-nodeports` says `goto nodeport-lb-N`, which marks for
  masquerade and looks up `l4proto . nodeport . i` in `nodeport-endpoints` (the
  daddr is any local address, so it cannot be part of the key);
- externalIPs and LoadBalancer ingress IPs are more `service-ips` elements, `goto
  ext-lb-N` (mark for masquerade, then `lb-N`), with their own N endpoint elements;
- the `service-ips`/`service-nodeports` elements of these services carry the
  service's name as an element comment, for `proxy explain`;
- a service port with ClientIP affinity (a set per endpoint) or more than LB_MAX
  endpoints keeps a chain of its own, `svc-...` (plus `ext-...` for a NodePort or
  external addresses), as before: one `numgen random mod K 0 ... dnat` rule per
  endpoint, where K counts down (1/N, then 1/(N-1) of the rest, ...);
- `no-endpoint-services` / `no-endpoint-nodeports` send new connections to a service
  without ready endpoints to `reject-chain` (filter hooks), so clients fail at once;
- masquerade happens in postrouting for marked packets and for hairpin traffic
  (a pod reaching itself through its service), found in the set `hairpin`.

Why: nft 1.0.6 (Debian 12) reads every chain of the ruleset into its cache before
any `add element` or `add rule`, so one change cost grows with the number of chains
(one per service port before: 112 ms to replace an endpoint at 10,000 services).
Here the number of chains is 3 x LB_MAX + 12 whatever the services, and replacing an
endpoint rewrites a few elements of a plain hash map (no interval set, which copies
itself on each commit): ~0.2 ms at 1,000 and at 30,000 services. Per-service named
or anonymous sets are still avoided: nft 1.0.6 is quadratic in the number of sets
of a table (10,000 services: 75 s), one big map is not.

`lb_max=0` gives every service port its own chain: the layout before the shared
chains, kept for the benchmark's comparison.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from kubeling.proxy.nft import Transaction
from kubeling.proxy.servicemap import Endpoint, ServicePort

MASQUERADE_MARK = "0x4000"

SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
HAIRPIN = "hairpin"
ENDPOINTS = "service-endpoints"
NODEPORT_ENDPOINTS = "nodeport-endpoints"
MAPS = (
    SERVICE_IPS,
    SERVICE_NODEPORTS,
    NO_ENDPOINT_SERVICES,
    NO_ENDPOINT_NODEPORTS,
    ENDPOINTS,
    NODEPORT_ENDPOINTS,
)

# Services with up to this many endpoints share the `lb-N` chains; more, and a
# service gets a chain of its own (rare; each shared chain costs every nft command
# a little, see above).
LB_MAX = 64

MARK_FOR_MASQUERADE = "mark-for-masquerade"
REJECT_CHAIN = "reject-chain"

_SERVICE_KEY = "ipv4_addr . inet_proto . inet_service"
_NODEPORT_KEY = "inet_proto . inet_service"
# `typeof`: a numgen has no named type; the `mod` in the declaration is only its type.
_ENDPOINTS_KEY = f"typeof ip daddr . meta l4proto . th dport . numgen random mod {LB_MAX}"
_NODEPORT_ENDPOINTS_KEY = f"typeof meta l4proto . th dport . numgen random mod {LB_MAX}"
_ENDPOINT_VALUE = "ip daddr . th dport"


@dataclass(frozen=True)
class BaseChain:
    name: str
    hook: str
    rules: tuple[str, ...]


def sets() -> dict[str, tuple[str, str]]:
    """The table's fixed sets and maps: name -> (kind, declaration)."""
    return {
        SERVICE_IPS: ("map", f"type {_SERVICE_KEY} : verdict"),
        SERVICE_NODEPORTS: ("map", f"type {_NODEPORT_KEY} : verdict"),
        NO_ENDPOINT_SERVICES: ("map", f"type {_SERVICE_KEY} : verdict"),
        NO_ENDPOINT_NODEPORTS: ("map", f"type {_NODEPORT_KEY} : verdict"),
        HAIRPIN: ("set", "type ipv4_addr . ipv4_addr"),
        ENDPOINTS: ("map", f"{_ENDPOINTS_KEY} : {_ENDPOINT_VALUE}"),
        NODEPORT_ENDPOINTS: ("map", f"{_NODEPORT_ENDPOINTS_KEY} : {_ENDPOINT_VALUE}"),
    }


def lb_chain(count: int) -> str:
    return f"lb-{count}"


def external_lb_chain(count: int) -> str:
    return f"ext-lb-{count}"


def nodeport_lb_chain(count: int) -> str:
    return f"nodeport-lb-{count}"


def _lb_chains(cluster_cidr: str, lb_max: int) -> list[BaseChain]:
    """The shared chains of services with 1..lb_max endpoints (targets first)."""
    pick = "numgen random mod {n}"
    out = []
    for n in range(1, lb_max + 1):
        rules = []
        if cluster_cidr:
            # To a ClusterIP from outside the pod network (the same mark that the
            # external chains set unconditionally).
            rules.append(f"ip saddr != {cluster_cidr} jump {MARK_FOR_MASQUERADE}")
        lookup = f"ip daddr . meta l4proto . th dport . {pick.format(n=n)}"
        rules.append(f"dnat ip to {lookup} map @{ENDPOINTS}")
        out.append(BaseChain(lb_chain(n), "", tuple(rules)))
    for n in range(1, lb_max + 1):
        out.append(
            BaseChain(
                external_lb_chain(n), "", (f"jump {MARK_FOR_MASQUERADE}", f"goto {lb_chain(n)}")
            )
        )
    for n in range(1, lb_max + 1):
        lookup = f"meta l4proto . th dport . {pick.format(n=n)}"
        out.append(
            BaseChain(
                nodeport_lb_chain(n),
                "",
                (f"jump {MARK_FOR_MASQUERADE}", f"dnat ip to {lookup} map @{NODEPORT_ENDPOINTS}"),
            )
        )
    return out


def fixed_chains(cluster_cidr: str = "", lb_max: int = LB_MAX) -> list[BaseChain]:
    """Chains every table has, in the order they must be created (targets first)."""
    local = "fib daddr type local ip daddr != 127.0.0.0/8"
    return [
        BaseChain(MARK_FOR_MASQUERADE, "", (f"meta mark set meta mark | {MASQUERADE_MARK}",)),
        BaseChain(REJECT_CHAIN, "", ("reject",)),
        *_lb_chains(cluster_cidr, lb_max),
        BaseChain(
            "services",
            "",
            (
                f"ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}",
                f"{local} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}",
            ),
        ),
        BaseChain(
            "service-endpoints-check",
            "",
            (f"ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}",),
        ),
        BaseChain(
            "nodeport-endpoints-check",
            "",
            (f"{local} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}",),
        ),
        BaseChain(
            "masquerading",
            "",
            (
                f"ct status dnat ip saddr . ip daddr @{HAIRPIN} masquerade",
                f"meta mark & {MASQUERADE_MARK} == 0 return",
                f"meta mark set meta mark ^ {MASQUERADE_MARK}",
                "masquerade fully-random",
            ),
        ),
        BaseChain("nat-prerouting", "type nat hook prerouting priority dstnat", ("jump services",)),
        BaseChain("nat-output", "type nat hook output priority -100", ("jump services",)),
        BaseChain(
            "nat-postrouting", "type nat hook postrouting priority srcnat", ("jump masquerading",)
        ),
        BaseChain(
            "filter-input",
            "type filter hook input priority -110",
            (
                "ct state new jump nodeport-endpoints-check",
                "ct state new jump service-endpoints-check",
            ),
        ),
        BaseChain(
            "filter-forward",
            "type filter hook forward priority -110",
            ("ct state new jump service-endpoints-check",),
        ),
        BaseChain(
            "filter-output",
            "type filter hook output priority -110",
            (
                "ct state new jump service-endpoints-check",
                "ct state new jump nodeport-endpoints-check",
            ),
        ),
    ]


@dataclass(slots=True)
class ServiceRules:
    """What one service port puts in the table."""

    chains: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # map name -> {key: value}
    elements: dict[str, dict[str, str]] = field(default_factory=dict)
    affinity_sets: dict[str, int] = field(default_factory=dict)  # name -> timeout (s)
    hairpin: frozenset[str] = frozenset()  # endpoint IPs

    @property
    def rule_count(self) -> int:
        return sum(len(rules) for rules in self.chains.values())


def _suffix(sp: ServicePort) -> str:
    digest = hashlib.sha256(
        f"{sp.namespace}/{sp.name}/{sp.protocol}/{sp.port_name}".encode()
    ).hexdigest()[:8]
    port = sp.port_name or str(sp.port)
    return f"{digest}-{sp.namespace}/{sp.name}/{sp.protocol}/{port}"


def service_chain(sp: ServicePort) -> str:
    return f"svc-{_suffix(sp)}"


def external_chain(sp: ServicePort) -> str:
    return f"ext-{_suffix(sp)}"


def affinity_set(sp: ServicePort, endpoint: Endpoint) -> str:
    # The timeout is part of the name: a set's declaration cannot be changed, so a new
    # timeout means a new set (and the old one is deleted).
    key = f"{_suffix(sp)}/{endpoint.ip}/{endpoint.port}/{sp.affinity_timeout}"
    return f"affinity-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def service_key(sp: ServicePort) -> str:
    """The element key of a service port in `service-ips`."""
    return f"{sp.cluster_ip} . {sp.protocol} . {sp.port}"


def external_keys(sp: ServicePort) -> list[str]:
    """The `service-ips` element keys of a service port's external addresses."""
    return [f"{ip} . {sp.protocol} . {sp.port}" for ip in sp.external_ips]


def nodeport_key(sp: ServicePort) -> str:
    return f"{sp.protocol} . {sp.node_port}"


def commented(key: str, sp: ServicePort) -> str:
    """A map element key with the service's name as its comment (nft keeps it in the
    kernel and prints it back: `proxy explain` names the service from it)."""
    return f'{key} comment "{sp.service}"'


def uses_lb_chains(sp: ServicePort, lb_max: int = LB_MAX) -> bool:
    """Whether a service port's endpoints are elements picked by the shared `lb-N`
    chains (else it has a chain of its own)."""
    return not sp.affinity_timeout and 0 < len(sp.endpoints) <= lb_max


def service_rules(sp: ServicePort, cluster_cidr: str = "", lb_max: int = LB_MAX) -> ServiceRules:
    """The chains, map elements and sets of one service port. `cluster_cidr`: the
    pod network; traffic to a ClusterIP from outside it is masqueraded."""
    out = ServiceRules(elements={name: {} for name in MAPS})
    if not sp.endpoints:
        out.elements[NO_ENDPOINT_SERVICES][service_key(sp)] = f"goto {REJECT_CHAIN}"
        for key in external_keys(sp):
            out.elements[NO_ENDPOINT_SERVICES][key] = f"goto {REJECT_CHAIN}"
        if sp.node_port:
            out.elements[NO_ENDPOINT_NODEPORTS][nodeport_key(sp)] = f"goto {REJECT_CHAIN}"
        return out
    out.hairpin = frozenset(ep.ip for ep in sp.endpoints)
    if uses_lb_chains(sp, lb_max):
        _shared_chain_rules(sp, out)
    else:
        _own_chain_rules(sp, cluster_cidr, out)
    return out


def _shared_chain_rules(sp: ServicePort, out: ServiceRules) -> None:
    count = len(sp.endpoints)
    targets = [f"{ep.ip} . {ep.port}" for ep in sp.endpoints]
    endpoints = out.elements[ENDPOINTS]
    for key in (service_key(sp), *external_keys(sp)):
        endpoints.update((f"{key} . {i}", target) for i, target in enumerate(targets))
    out.elements[SERVICE_IPS][commented(service_key(sp), sp)] = f"goto {lb_chain(count)}"
    for key in external_keys(sp):
        out.elements[SERVICE_IPS][commented(key, sp)] = f"goto {external_lb_chain(count)}"
    if sp.node_port:
        key = nodeport_key(sp)
        out.elements[NODEPORT_ENDPOINTS].update(
            (f"{key} . {i}", target) for i, target in enumerate(targets)
        )
        out.elements[SERVICE_NODEPORTS][commented(key, sp)] = f"goto {nodeport_lb_chain(count)}"


def _own_chain_rules(sp: ServicePort, cluster_cidr: str, out: ServiceRules) -> None:
    svc = service_chain(sp)
    rules: list[str] = []
    if cluster_cidr:
        rules.append(
            f"ip daddr {sp.cluster_ip} ip saddr != {cluster_cidr} jump {MARK_FOR_MASQUERADE}"
        )
    nat = f"meta l4proto {sp.protocol} dnat to"
    if sp.affinity_timeout:
        for ep in sp.endpoints:
            name = affinity_set(sp, ep)
            out.affinity_sets[name] = sp.affinity_timeout
            # A hit refreshes the entry: an active client stays (as upstream).
            rules.append(f"ip saddr @{name} update @{name} {{ ip saddr }} {nat} {ep.ip}:{ep.port}")
    count = len(sp.endpoints)
    for index, ep in enumerate(sp.endpoints):
        remaining = count - index
        pick = f"numgen random mod {remaining} 0 " if remaining > 1 else ""
        remember = f"update @{affinity_set(sp, ep)} {{ ip saddr }} " if sp.affinity_timeout else ""
        rules.append(f"{pick}{remember}{nat} {ep.ip}:{ep.port}")
    out.chains[svc] = tuple(rules)
    out.elements[SERVICE_IPS][service_key(sp)] = f"goto {svc}"
    if sp.node_port or sp.external_ips:
        # Traffic from outside is masqueraded so replies come back through this
        # node (externalTrafficPolicy Cluster, as upstream's external chain).
        ext = external_chain(sp)
        out.chains[ext] = (f"jump {MARK_FOR_MASQUERADE}", f"goto {svc}")
        for key in external_keys(sp):
            out.elements[SERVICE_IPS][key] = f"goto {ext}"
        if sp.node_port:
            out.elements[SERVICE_NODEPORTS][nodeport_key(sp)] = f"goto {ext}"


def hairpin_key(ip: str) -> str:
    return f"{ip} . {ip}"


def affinity_declaration(timeout: int) -> str:
    return f"type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s"


def add_skeleton(
    tx: Transaction, cluster_cidr: str = "", lb_max: int = LB_MAX, new_table: bool = True
) -> None:
    """Create the table's fixed sets and chains (idempotent: `add` keeps what is
    there), then (re)write the fixed chains' rules.

    `new_table`: the transaction deleted the table before (or there was none). If
    not, the shared `lb-N` chains are left as they are: nft 1.0.6 cannot add a rule
    that looks up an endpoint map which is already in the kernel (it fails to read
    back the map's `typeof ... : ip daddr . th dport`: "conflicting protocols
    specified: ip vs. th"). Their rules depend only on `cluster_cidr` and `lb_max`,
    so the proxier replaces the table when those change."""
    tx.add_table()
    for name, (kind, declaration) in sets().items():
        if kind == "map":
            tx.add_map(name, declaration)
        else:
            tx.add_set(name, declaration)
    for chain in fixed_chains(cluster_cidr, lb_max):
        tx.add_chain(chain.name, chain.hook)
        if new_table or not is_shared_chain(chain.name):
            tx.flush_chain(chain.name)
            tx.add_rules(chain.name, chain.rules)


def is_shared_chain(name: str) -> bool:
    """`lb-N`, `ext-lb-N` or `nodeport-lb-N`."""
    return name.startswith(("lb-", "ext-lb-", "nodeport-lb-"))
