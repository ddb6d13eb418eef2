"""Hollow nodes: many kubelets in one process on the fake CRI runtime.

For testing and benchmarking the control plane at scale on one machine (as
Kubernetes' kubemark does): each hollow node is a real `Kubelet` — it registers,
keeps its Lease and conditions, watches its pods and runs them — but its runtime
is an in-memory `FakeRuntime` and it serves no kubelet API.

    python -m kubeling.kubelet.hollow --master 127.0.0.1:6443 --nodes 100
    python -m kubeling.kubelet.hollow --master 10.0.0.1:6443,10.0.0.2:6443 --nodes 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from kubeling.client import Client
from kubeling.client.client import READ_RETRY
from kubeling.common.lifecycle import until_terminated
from kubeling.common.logging import setup_logging
from kubeling.common.rpc import channel
from kubeling.common.supervisor import LoopFailed, Supervisor
from kubeling.common.targets import TargetError, is_list, parse_list
from kubeling.cri.fake import FakeRuntime
from kubeling.kubelet.kubelet import Kubelet, KubeletConfig

log = structlog.get_logger(__name__)

BUSYBOX = "docker.io/library/busybox:latest"
# At most this many nodes share one connection to the master (each node holds
# two watches open on it: its pods and its local volumes).
NODES_PER_CONNECTION = 250


async def own_connection(client: Client) -> Client:
    """`client`, moved to a channel with a subchannel pool of its own, so it gets a
    TCP connection no other channel shares."""
    old = client.channel
    client.channel = channel(
        client.target,
        options=[("grpc.use_local_subchannel_pool", 1)],
        method_config=[READ_RETRY],
    )
    for resource in client._resources():
        resource.connect(client.channel)
    await old.close()  # never used: it holds no connection yet
    return client


@dataclass
class HollowSettings:
    prefix: str = "hollow"
    # Slower loops than a real kubelet: thousands of nodes share one process.
    relist_period: float = 5.0
    status_interval: float = 60.0
    # The fake runtime never turns unhealthy: a check per node per second would be
    # 5,000 checks a second at 5,000 nodes.
    runtime_check_interval: float = 30.0
    lease_renew_interval: float = 10.0
    cluster_cidr: str = "10.128.0.0/9"
    log_dir: Path = field(default_factory=lambda: Path("/tmp/kubeling-hollow"))


class HollowCluster:
    def __init__(self, master: str, count: int, settings: HollowSettings | None = None) -> None:
        self.master = master
        self.count = count
        self.settings = settings or HollowSettings()
        self.kubelets: list[Kubelet] = []
        self._clients: list[Client] = []
        # Fails when any node's loop gave up (each kubelet supervises its own loops).
        self.supervisor = Supervisor("hollow")

    def node_names(self) -> list[str]:
        return [f"{self.settings.prefix}-{i:05d}" for i in range(self.count)]

    async def start(self, parallel: int = 64) -> None:
        s = self.settings
        subnets = ipaddress.IPv4Network(s.cluster_cidr).subnets(new_prefix=24)
        # A few connections shared by all nodes (one per node would be thousands of
        # TCP connections for no gain), but each its own: gRPC gives channels with
        # the same target and options one shared connection, and 5,000 nodes'
        # 10,000 watches on one HTTP/2 connection reach the master's
        # max_concurrent_streams (10,000), after which every call waits for a free
        # stream and fails with DEADLINE_EXCEEDED (no pod ever started).
        self._clients = [
            await own_connection(Client(self.master))
            for _ in range(max(8, math.ceil(self.count / NODES_PER_CONNECTION)))
        ]
        for i, name in enumerate(self.node_names()):
            cidr = str(next(subnets))
            config = KubeletConfig(
                master=self.master,
                node_name=name,
                listen="",
                node_ip=f"127.0.{(i >> 8) & 255}.{i & 255}",
                pod_cidr=cidr,
                pod_log_dir=s.log_dir / name,
                root_dir=s.log_dir / f"{name}.root",
                relist_period=s.relist_period,
                status_interval=s.status_interval,
                runtime_check_interval=s.runtime_check_interval,
                lease_renew_interval=s.lease_renew_interval,
            )
            runtime = FakeRuntime(pod_cidr=cidr, images=[BUSYBOX])
            kubelet = Kubelet(config, runtime, self._clients[i % len(self._clients)])
            kubelet.supervisor.on_failure(self._node_failed)
            self.kubelets.append(kubelet)
        slots = asyncio.Semaphore(parallel)

        async def start_one(kubelet: Kubelet) -> None:
            async with slots:
                await kubelet.start()

        await asyncio.gather(*(start_one(k) for k in self.kubelets))
        log.info("hollow nodes running", count=self.count)

    def _node_failed(self, failure: LoopFailed) -> None:
        if self.supervisor.failure is None:
            self.supervisor.failure = failure
            self.supervisor.failed.set()

    async def stop(self) -> None:
        await asyncio.gather(*(k.stop() for k in self.kubelets), return_exceptions=True)
        for client in self._clients:
            await client.close()


async def _main(args: argparse.Namespace) -> int:
    cluster = HollowCluster(args.master, args.nodes, HollowSettings(prefix=args.prefix))
    await cluster.start()
    code = 0
    with contextlib.suppress(asyncio.CancelledError):
        code = await until_terminated(cluster.supervisor)
    await cluster.stop()
    return code


def main() -> None:
    parser = argparse.ArgumentParser(prog="kubeling-hollow-nodes", description=__doc__)
    parser.add_argument(
        "--master",
        default="localhost:6443",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="the master, or several masters of one cluster comma-separated",
    )
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--prefix", default="hollow")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    if is_list(args.master):
        try:
            parse_list(args.master)
        except TargetError as exc:
            parser.error(f"--master: {exc}")
    setup_logging(args.log_level)
    sys.exit(asyncio.run(_main(args)))


if __name__ == "__main__":
    main()
