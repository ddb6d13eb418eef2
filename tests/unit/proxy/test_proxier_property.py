"""The proxier's strong property: after any sequence of partial (and full) syncs, the
table equals the one a brand-new proxier writes for the same desired state."""

from __future__ import annotations

import dataclasses
import random

import pytest

from kubeling.proxy import rules as r
from kubeling.proxy.nft import FakeNftables
from kubeling.proxy.proxier import Proxier
from kubeling.proxy.servicemap import Endpoint, ServicePort
from tests.unit.proxy.builders import CapturingNftables, full_dump, sp

ENDPOINT_POOL = [f"10.244.{i // 4}.{i % 4 + 2}" for i in range(10)]  # small: IPs are shared


class World:
    """A random desired state: services with ports, endpoints, node ports, affinity."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.desired: dict[str, list[ServicePort]] = {}
        self.next_ip = 10
        self.next_node_port = 30000

    def _node_port(self) -> int:
        self.next_node_port += 1
        return self.next_node_port

    def _endpoints(self, port: int) -> tuple[Endpoint, ...]:
        ips = self.rng.sample(ENDPOINT_POOL, self.rng.randint(0, 4))
        return tuple(sorted(Endpoint(ip, port) for ip in ips))

    def add_service(self) -> str:
        self.next_ip += 1
        name = f"svc{self.next_ip}"
        cluster_ip = f"10.96.{self.next_ip // 250}.{self.next_ip % 250}"
        affinity = self.rng.choice([0, 0, 60, 10800])
        # An external address of its own (no two services share one: servicemap's
        # owners see to that).
        external = (f"203.0.{self.next_ip // 250}.{self.next_ip % 250}",)
        has_external = self.rng.random() < 0.3
        ports = []
        for index in range(self.rng.randint(1, 2)):
            protocol = self.rng.choice(["tcp", "udp"])
            node_port = self._node_port() if self.rng.random() < 0.4 else 0
            target = 8000 + index
            ports.append(
                dataclasses.replace(
                    sp(
                        name,
                        cluster_ip,
                        [],
                        port_name=f"p{index}",
                        protocol=protocol,
                        port=80 + index,
                        target_port=target,
                        node_port=node_port,
                        affinity_timeout=affinity,
                    ),
                    endpoints=self._endpoints(target),
                    external_ips=external if has_external else (),
                )
            )
        key = f"default/{name}"
        self.desired[key] = ports
        return key

    def change(self) -> str:
        """One random change; returns the key of the service it touched."""
        if not self.desired or self.rng.random() < 0.15:
            return self.add_service()
        key = self.rng.choice(sorted(self.desired))
        ports = self.desired[key]
        what = self.rng.choice(
            ["remove", "add-ep", "add-ep", "remove-ep", "remove-ep", "endpoints", "nodeport",
             "affinity", "drop-port", "external"]
        )  # fmt: skip
        index = self.rng.randrange(len(ports))
        port = ports[index]
        if what == "remove":
            del self.desired[key]
            return key
        if what == "add-ep":
            ip = self.rng.choice(ENDPOINT_POOL)
            eps = tuple(sorted({*port.endpoints, Endpoint(ip, 8000 + index)}))
            port = dataclasses.replace(port, endpoints=eps)
        elif what == "remove-ep" and port.endpoints:
            gone = self.rng.choice(port.endpoints)
            kept = tuple(ep for ep in port.endpoints if ep != gone)
            port = dataclasses.replace(port, endpoints=kept)
        elif what == "endpoints":
            port = dataclasses.replace(port, endpoints=self._endpoints(8000 + index))
        elif what == "nodeport":
            port = dataclasses.replace(port, node_port=0 if port.node_port else self._node_port())
        elif what == "affinity":
            # On/off for the whole service (a change of the timeout alone is tested
            # on its own in test_proxier.py).
            timeout = 0 if port.affinity_timeout else self.rng.choice([60, 10800])
            ports = [dataclasses.replace(p, affinity_timeout=timeout) for p in ports]
            port = ports[index]
        elif what == "external":
            address = f"203.0.{port.cluster_ip.split('.')[2]}.{port.cluster_ip.split('.')[3]}"
            ports = [
                dataclasses.replace(p, external_ips=() if p.external_ips else (address,))
                for p in ports
            ]
            port = ports[index]
        elif what == "drop-port" and len(ports) > 1:
            self.desired[key] = [p for i, p in enumerate(ports) if i != index]
            return key
        self.desired[key] = [*ports[:index], port, *ports[index + 1 :]]
        return key


def fresh(desired: dict[str, list[ServicePort]], lb_max: int) -> Proxier:
    proxier = Proxier(FakeNftables(), lb_max=lb_max)
    proxier.sync_full(desired)
    return proxier


def counters(proxier: Proxier) -> tuple[int, int, int, int]:
    """What Status and the metrics report (kept up to date by each sync)."""
    return (proxier.service_ports, proxier.endpoints, proxier.chains, proxier.rules)


# The shared lb-N chains (default), a chain per service (0), and a mix: with 2, a
# service moves between the layouts as its endpoints come and go (up to 4).
LAYOUTS = [r.LB_MAX, 0, 2]


@pytest.mark.parametrize("lb_max", LAYOUTS)
@pytest.mark.parametrize("seed", range(8))
def test_partial_syncs_match_a_fresh_full_sync(seed: int, lb_max: int) -> None:
    rng = random.Random(seed)
    world = World(rng)
    for _ in range(6):
        world.add_service()
    backend = CapturingNftables()
    proxier = Proxier(backend, lb_max=lb_max)
    proxier.sync_full(world.desired)
    assert backend.dump() == full_dump(world.desired, lb_max=lb_max)
    for step in range(60):
        if rng.random() < 0.08:
            proxier.sync_full(dict(world.desired))
            assert backend.dump() == full_dump(world.desired, lb_max=lb_max), (seed, step, "full")
            continue
        touched = {world.change() for _ in range(rng.randint(1, 3))}
        changed = {key: world.desired.get(key, []) for key in touched}
        result = proxier.sync_partial(changed)
        assert backend.dump() == full_dump(world.desired, lb_max=lb_max), f"seed {seed} step {step}"
        assert result.services == sorted(touched)
        # What the partial sync sent names no service it was not told about.
        script = backend.seen[-1].script()
        for key in world.desired.keys() - touched:
            assert f"-{key}/" not in script, (seed, step, key)  # a chain
            assert f'"{key}:' not in script, (seed, step, key)  # an element's comment
        for key in touched:
            assert proxier.applied_ports(key) == world.desired.get(key, [])
        assert counters(proxier) == counters(fresh(world.desired, lb_max)), (seed, step)


@pytest.mark.parametrize("lb_max", LAYOUTS)
@pytest.mark.parametrize("seed", range(3))
def test_partial_syncs_survive_failed_transactions(seed: int, lb_max: int) -> None:
    """Random failures of apply: the proxier's memory never drifts from the table."""
    rng = random.Random(1000 + seed)
    world = World(rng)
    for _ in range(5):
        world.add_service()
    backend = FakeNftables()
    proxier = Proxier(backend, lb_max=lb_max)
    proxier.sync_full(world.desired)
    pending: set[str] = set()
    for step in range(40):
        pending |= {world.change() for _ in range(rng.randint(1, 2))}
        if rng.random() < 0.3:
            backend.fail_next = "boom"
            before = backend.dump()
            with pytest.raises(Exception, match="boom"):
                proxier.sync_partial({key: world.desired.get(key, []) for key in pending})
            assert backend.dump() == before
            continue  # the changes stay pending, as KubeProxy re-queues them
        proxier.sync_partial({key: world.desired.get(key, []) for key in pending})
        pending.clear()
        assert backend.dump() == full_dump(world.desired, lb_max=lb_max), f"seed {seed} step {step}"
        assert counters(proxier) == counters(fresh(world.desired, lb_max)), (seed, step)
