"""The proxier: turns desired service ports into nftables transactions.

It remembers what it last applied (chains, map elements, sets, per service), so a
partial sync sends only the difference for the services that changed, without
listing the table. A full sync rewrites everything in one transaction; the first one
also replaces whatever table an earlier proxy left (`add; delete; add` in the same
transaction), so a restart never leaves a window without rules.

Synchronous and I/O-free but for the backend; `service.py` runs it off the event loop.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from kubeling.proxy import rules as r
from kubeling.proxy.nft import NftBackend, Transaction, release_free_memory
from kubeling.proxy.servicemap import Endpoint, ServicePort


@dataclass
class _Applied:
    """One service's share of the table, as last applied."""

    ports: list[ServicePort]
    rules: r.ServiceRules

    def counts(self) -> Counter[str]:
        """What it adds to the proxier's counters."""
        return Counter(
            service_ports=len(self.ports),
            endpoints=sum(len(sp.endpoints) for sp in self.ports),
            chains=len(self.rules.chains),
            rules=self.rules.rule_count,
        )


@dataclass(frozen=True)
class StaleFlow:
    """UDP conntrack entries to clear: flows to `address:port` (a ClusterIP, or any
    node address when `node_port`) that were DNATed to `endpoint` (or, when
    `endpoint` is None, any flow: the service had no endpoints before)."""

    protocol: str
    address: str
    port: int
    endpoint: str | None
    node_port: bool = False


@dataclass
class SyncResult:
    full: bool
    seconds: float
    operations: int
    services: list[str] = field(default_factory=list)  # service keys applied
    stale_flows: list[StaleFlow] = field(default_factory=list)


def _merge(ports: Iterable[ServicePort], cluster_cidr: str, lb_max: int) -> r.ServiceRules:
    merged = r.ServiceRules(elements={name: {} for name in r.MAPS})
    hairpin: set[str] = set()
    for sp in ports:
        part = r.service_rules(sp, cluster_cidr, lb_max)
        merged.chains.update(part.chains)
        for name, elements in part.elements.items():
            merged.elements[name].update(elements)
        merged.affinity_sets.update(part.affinity_sets)
        hairpin |= part.hairpin
    merged.hairpin = frozenset(hairpin)
    return merged


def _stale_flows(old: list[ServicePort], new: list[ServicePort]) -> list[StaleFlow]:
    """UDP flows that would keep going to endpoints that are gone (Kubernetes clears
    these; UDP has no connection to reset), or that were rejected while the
    service had no endpoints."""
    now = {(sp.protocol, sp.port_name): sp for sp in new}
    flows: list[StaleFlow] = []
    for before in old:
        if before.protocol != "udp":
            continue
        after = now.get((before.protocol, before.port_name))
        kept: set[Endpoint] = set(after.endpoints) if after else set()
        for ep in set(before.endpoints) - kept:
            flows.append(StaleFlow("udp", before.cluster_ip, before.port, ep.ip))
            if before.node_port:
                flows.append(StaleFlow("udp", "", before.node_port, ep.ip, node_port=True))
    was = {(sp.protocol, sp.port_name): sp for sp in old}
    for after in new:
        before_port = was.get((after.protocol, after.port_name))
        had = before_port.endpoints if before_port else ()
        if after.protocol == "udp" and after.endpoints and not had:
            flows.append(StaleFlow("udp", after.cluster_ip, after.port, None))
            if after.node_port:
                flows.append(StaleFlow("udp", "", after.node_port, None, node_port=True))
    return flows


class Proxier:
    def __init__(self, backend: NftBackend, cluster_cidr: str = "", lb_max: int = r.LB_MAX) -> None:
        """`lb_max`: services with up to this many endpoints share the `lb-N`
        chains (rules.py); 0 gives each service port a chain of its own."""
        self.backend = backend
        self.cluster_cidr = cluster_cidr
        self.lb_max = lb_max
        # Changed in place by the sync thread only; other threads read the counters
        # (kept up to date: summing 30,000 services at every sync took 36 ms) and
        # single keys.
        self._applied: dict[str, _Applied] = {}
        self._counts: Counter[str] = Counter()
        self._hairpin: Counter[str] = Counter()
        self._table_replaced = False  # the first full sync replaces the table
        self._applied_cidr = cluster_cidr  # the cluster CIDR the applied rules use
        fixed = r.fixed_chains(cluster_cidr, lb_max)
        self._fixed_chains, self._fixed_rules = len(fixed), sum(len(c.rules) for c in fixed)

    # -- what is programmed ------------------------------------------------------

    @property
    def service_ports(self) -> int:
        return self._counts["service_ports"]

    @property
    def endpoints(self) -> int:
        return self._counts["endpoints"]

    @property
    def chains(self) -> int:
        return self._fixed_chains + self._counts["chains"]

    @property
    def rules(self) -> int:
        return self._fixed_rules + self._counts["rules"]

    def applied_ports(self, key: str) -> list[ServicePort]:
        applied = self._applied.get(key)
        return list(applied.ports) if applied else []

    # -- syncing -----------------------------------------------------------------

    def sync_full(self, desired: Mapping[str, list[ServicePort]]) -> SyncResult:
        """Rewrite the whole table for `desired` (every service)."""
        start = time.perf_counter()
        cidr = self.cluster_cidr  # may change meanwhile (the node's podCIDR)
        new = self._plan(desired, cidr, reuse=True)
        # A new cluster CIDR changes the shared chains' rules, which nft 1.0.6 can
        # only write into a new table (rules.add_skeleton).
        replacing = not self._table_replaced or cidr != self._applied_cidr
        tx = Transaction()
        if replacing:
            tx.add_table()
            tx.delete_table()
        r.add_skeleton(tx, cidr, self.lb_max, new_table=replacing)
        for name in r.MAPS:
            tx.flush_map(name)
        tx.flush_set(r.HAIRPIN)
        hairpin: Counter[str] = Counter()
        for applied in new.values():
            hairpin.update(applied.rules.hairpin)
            for name, timeout in applied.rules.affinity_sets.items():
                tx.add_set(name, r.affinity_declaration(timeout))
        chains = [(name, rules) for a in new.values() for name, rules in a.rules.chains.items()]
        # Service chains before the external chains that go to them.
        chains.sort(key=lambda item: not item[0].startswith("svc-"))
        for name, _ in chains:
            tx.add_chain(name)
            if not replacing:
                tx.flush_chain(name)
        for name, chain_rules in chains:
            tx.add_rules(name, chain_rules)
        for map_name in r.MAPS:
            tx.add_elements(
                map_name,
                (item for a in new.values() for item in a.rules.elements[map_name].items()),
            )
        tx.add_elements(r.HAIRPIN, ((r.hairpin_key(ip), "") for ip in hairpin))
        if not replacing:
            wanted = {name for name, _ in chains}
            stale = [
                name
                for a in self._applied.values()
                for name in a.rules.chains
                if name not in wanted
            ]
            self._remove_chains(tx, stale)
            wanted_sets = {n for a in new.values() for n in a.rules.affinity_sets}
            for a in self._applied.values():
                for name in a.rules.affinity_sets:
                    if name not in wanted_sets:
                        tx.delete_set(name)
        self._apply(tx)
        stale_flows = [
            flow
            for key in set(self._applied) | set(new)
            for flow in _stale_flows(self.applied_ports(key), desired.get(key, []))
        ]
        self._applied = {key: a for key, a in new.items() if a.ports}
        counts: Counter[str] = Counter()
        for applied in self._applied.values():
            counts.update(applied.counts())
        self._counts = counts
        self._hairpin = hairpin
        self._table_replaced = True
        self._applied_cidr = cidr
        fixed = r.fixed_chains(cidr, self.lb_max)
        self._fixed_chains, self._fixed_rules = len(fixed), sum(len(c.rules) for c in fixed)
        operations = len(tx)
        del tx, new, chains
        # libnftables' and our own garbage of a big transaction, back to the kernel.
        release_free_memory()
        return SyncResult(
            True, time.perf_counter() - start, operations, sorted(desired), stale_flows
        )

    def sync_partial(self, changed: Mapping[str, list[ServicePort]]) -> SyncResult:
        """Apply only what changed for the services in `changed` (an empty list:
        the service is gone). Work is proportional to those services, not to the
        table."""
        start = time.perf_counter()
        new = self._plan(changed, self.cluster_cidr)
        empty = r.ServiceRules(elements={name: {} for name in r.MAPS})
        tx = Transaction()
        hairpin_delta: Counter[str] = Counter()
        add_elements: dict[str, list[tuple[str, str]]] = {name: [] for name in r.MAPS}
        delete_elements: dict[str, list[str]] = {name: [] for name in r.MAPS}
        add_sets: dict[str, int] = {}
        new_chains: list[tuple[str, tuple[str, ...]]] = []
        changed_chains: list[tuple[str, tuple[str, ...]]] = []
        removed_chains: list[str] = []
        removed_sets: list[str] = []
        for key, applied in new.items():
            before = self._applied[key].rules if key in self._applied else empty
            after = applied.rules
            for map_name in r.MAPS:
                old, now = before.elements.get(map_name, {}), after.elements[map_name]
                delete_elements[map_name].extend(
                    element for element, value in old.items() if now.get(element) != value
                )
                add_elements[map_name].extend(
                    (element, value) for element, value in now.items() if old.get(element) != value
                )
            hairpin_delta.subtract(before.hairpin)
            hairpin_delta.update(after.hairpin)
            for name, timeout in after.affinity_sets.items():
                if name not in before.affinity_sets:
                    add_sets[name] = timeout
            removed_sets.extend(n for n in before.affinity_sets if n not in after.affinity_sets)
            for name, chain_rules in after.chains.items():
                if name not in before.chains:
                    new_chains.append((name, chain_rules))
                elif before.chains[name] != chain_rules:
                    changed_chains.append((name, chain_rules))
            removed_chains.extend(n for n in before.chains if n not in after.chains)
        hairpin = {ip: self._hairpin[ip] + delta for ip, delta in hairpin_delta.items() if delta}
        for map_name, keys in delete_elements.items():
            tx.delete_elements(map_name, keys)
        tx.delete_elements(
            r.HAIRPIN,
            (r.hairpin_key(ip) for ip, n in hairpin.items() if n <= 0 < self._hairpin[ip]),
        )
        for name, timeout in add_sets.items():
            tx.add_set(name, r.affinity_declaration(timeout))
        new_chains.sort(key=lambda item: not item[0].startswith("svc-"))
        for name, _ in new_chains:
            tx.add_chain(name)
        for name, _ in changed_chains:
            tx.flush_chain(name)
        for name, chain_rules in [*new_chains, *changed_chains]:
            tx.add_rules(name, chain_rules)
        for map_name, items in add_elements.items():
            tx.add_elements(map_name, items)
        tx.add_elements(
            r.HAIRPIN,
            ((r.hairpin_key(ip), "") for ip, n in hairpin.items() if n > 0 >= self._hairpin[ip]),
        )
        self._remove_chains(tx, removed_chains)
        for name in removed_sets:
            tx.delete_set(name)
        self._apply(tx)
        stale_flows = [
            flow for key in new for flow in _stale_flows(self.applied_ports(key), new[key].ports)
        ]
        for key, applied in new.items():
            before_applied = self._applied.pop(key, None)
            if before_applied is not None:
                self._counts.subtract(before_applied.counts())
            if applied.ports:
                self._applied[key] = applied
                self._counts.update(applied.counts())
        for ip, count in hairpin.items():
            if count > 0:
                self._hairpin[ip] = count
            else:
                self._hairpin.pop(ip, None)
        return SyncResult(False, time.perf_counter() - start, len(tx), sorted(changed), stale_flows)

    def _apply(self, tx: Transaction) -> None:
        try:
            self.backend.apply(tx)
        except Exception:
            # The kernel may no longer hold what we remember (someone flushed the
            # ruleset, ...): the next full sync replaces the table from scratch.
            self._table_replaced = False
            raise

    def _plan(
        self, ports: Mapping[str, list[ServicePort]], cidr: str, reuse: bool = False
    ) -> dict[str, _Applied]:
        """Each service's rules; with `reuse`, those of unchanged services are taken
        from what was applied (a periodic resync mostly rewrites the same)."""
        out = {}
        for key, wanted in ports.items():
            reusable = reuse and self._applied_cidr == cidr
            before = self._applied.get(key) if reusable else None
            if before is not None and before.ports == wanted:
                out[key] = before
            else:
                out[key] = _Applied(wanted, _merge(wanted, cidr, self.lb_max))
        return out

    @staticmethod
    def _remove_chains(tx: Transaction, names: list[str]) -> None:
        # Empty them all first: an external chain's rule refers to its service chain.
        for name in names:
            tx.flush_chain(name)
        for name in names:
            tx.delete_chain(name)
