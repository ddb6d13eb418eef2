"""The servers the fuzz suite attacks, run on an event loop in a background thread
so that the (synchronous) hypothesis tests can call them over gRPC, all with TLS
as they run for users:

- `master`: an in-process master (no controllers, mutual TLS, a join port)
  holding a namespace, a Node whose kubelet address is the hollow kubelet's, and a
  pod bound to it (so that Pods/Logs and Pods/Exec really reach a kubelet). It is
  called as its admin (`master`), as the node's kubelet (`master-as-node`: the
  Node authorizer's rules get the random requests) and without a certificate on
  its join port (`master-join`: Certificates/Join);
- `kubelet`: a real kubelet on the fake CRI runtime, running that pod, serving
  TLS with a node certificate from the master's CA; called as the master. It
  reports to a second (plaintext) master of its own, so that its status writes
  never change the data of the master under test;
- `proxy`: kubeling.v1.Proxy over a KubeProxy whose fake nftables hold one
  Service, serving TLS with a proxy certificate; called as the admin.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc

from kubeling.api.kinds import ALL_KINDS
from kubeling.client import Client
from kubeling.common import identity, pki
from kubeling.common.tls import CredentialDir, Credentials, channel_credentials
from kubeling.master.server import Master, MasterConfig
from kubeling.proxy.nft import FakeNftables
from kubeling.proxy.proxier import Proxier
from kubeling.proxy.server import serve_proxy_api
from kubeling.v1 import core_pb2
from tests.fuzz.seeds import seed_object
from tests.support.hollow import BUSYBOX, hollow_node, kubelet_config
from tests.support.waiting import eventually
from tests.unit.proxy.builders import make_kube_proxy, sp

T = TypeVar("T")

NODE = "node-1"


def seed_pod(namespace: str = "default", name: str = "web") -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = namespace
    pod.spec.node_name = NODE
    pod.spec.containers.add(name="app", image=BUSYBOX)
    return pod


class FuzzCluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-cluster")
        self._stack = contextlib.AsyncExitStack()
        self.master: Master | None = None
        self.addresses: dict[str, str] = {}
        # Server name -> the credentials to call it with (None: no certificate).
        self.credentials: dict[str, Credentials] = {}
        self.join_token = ""

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        self.run(self._start())

    def stop(self) -> None:
        try:
            self.run(self._stack.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)
            self.loop.close()

    @property
    def revision(self) -> int:
        """The master's store revision: any write, by anyone, moves it."""
        assert self.master is not None
        return self.master.store.revision

    async def _master(self, name: str, tls: bool) -> tuple[Master, Client]:
        master = Master(
            MasterConfig(
                listen="127.0.0.1:0",
                join_listen="127.0.0.1:0" if tls else "",
                data_dir=self.base / name,
                controllers=set(),
                tls=tls,
            )
        )
        port = await master.start()
        self._stack.push_async_callback(master.stop)
        admin = master.ca.admin_credentials() if master.ca is not None else None
        api = Client(f"127.0.0.1:{port}", timeout=10, credentials=admin)
        self._stack.push_async_callback(api.close)
        return master, api

    def _issue(self, name: str, user: identity.Identity, dns_names: list[str]) -> CredentialDir:
        """Credentials for `user` signed by the master under test's CA, in a directory."""
        assert self.master is not None and self.master.ca is not None
        key = pki.make_key()
        csr = pki.make_csr(key, user.user, user.groups)
        cert = self.master.ca.sign(
            csr, user.user, user.groups, server=True, dns_names=dns_names, ips=["127.0.0.1"]
        )
        directory = CredentialDir(self.base / "pki" / name, name)
        directory.save(Credentials(self.master.ca.ca_pem, cert, key))
        return directory

    async def _start(self) -> None:
        self.master, api = await self._master("master", tls=True)
        assert self.master.ca is not None
        admin = self.master.ca.admin_credentials()
        self.addresses["master"] = api.target
        self.credentials["master"] = admin
        node_user = identity.node_identity(NODE)
        self.addresses["master-as-node"] = api.target
        self.credentials["master-as-node"] = self._issue("node", node_user, [NODE]).load()
        self.addresses["master-join"] = f"127.0.0.1:{self.master.join_port}"
        self.join_token, _ = await self.master.tokens.issue(description="fuzz seeds")
        self.credentials["master-join"] = Credentials(admin.ca_pem, b"", b"")

        # The kubelet, on its own master, running the pod, serving TLS as its node.
        _, kapi = await self._master("kubelet-master", tls=False)
        config = kubelet_config(
            kapi.target, self.base, NODE, credentials=self._issue("kubelet", node_user, [NODE])
        )
        node = await self._stack.enter_async_context(hollow_node(config, kapi, "10.88.0.0/16"))
        assert node.kubelet.server is not None
        kubelet_port = int(node.kubelet.server.port)
        await kapi.pods.create(seed_pod())
        await eventually(lambda: _running(kapi), within=30, describe=lambda: _pods_of(kapi))
        self.addresses["kubelet"] = f"127.0.0.1:{kubelet_port}"
        # The kubelet answers only the master, whose certificate it checks; we check
        # its certificate names the node, as the master does.
        self.credentials["kubelet"] = self.master.ca.master_credentials().with_server_name(NODE)

        self._api = api
        self._kubelet_port = kubelet_port
        await self.reseed()

        backend = FakeNftables()
        Proxier(backend, "").sync_full(
            {"default/web": [sp(endpoints=["10.244.0.5", "10.244.0.6"], node_port=30080)]}
        )
        proxy_dir = self._issue("proxy", identity.proxy_identity(NODE), [NODE])
        server = await serve_proxy_api("127.0.0.1:0", make_kube_proxy(backend), proxy_dir)
        self._stack.push_async_callback(server.stop, 0)
        self.addresses["proxy"] = f"127.0.0.1:{server.port}"
        self.credentials["proxy"] = admin

    async def reseed(self) -> None:
        """Put back what the fuzzing may have deleted: the Node pointing at the
        kubelet and the pod bound to it (the master runs no controllers, so nothing
        else recreates them)."""
        api = self._api
        node = core_pb2.Node()
        node.metadata.name = NODE
        node.status.addresses.add(type="InternalIP", address="127.0.0.1")
        node.status.daemon_endpoints.kubelet_endpoint.port = self._kubelet_port
        namespace = core_pb2.Namespace()
        namespace.metadata.name = "default"
        seeds: list[tuple[Any, Any]] = [
            (namespace, api.namespaces),
            (node, api.nodes),
            (seed_pod(), api.pods),
        ]
        # The seed requests' objects, so that their Updates, Gets and Deletes find them.
        seeds += [(seed_object(kind), api.resource(kind)) for kind in ALL_KINDS]
        for obj, client in seeds:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await client.create(obj)
        # Created without status: the kubelet address lives in Node.status.
        with contextlib.suppress(grpc.aio.AioRpcError):
            current = await api.nodes.get(NODE)
            if current.status.daemon_endpoints.kubelet_endpoint.port != self._kubelet_port:
                current.status.CopyFrom(node.status)
                await api.nodes.update_status(current)

    def reseed_sync(self) -> None:
        self.run(self.reseed())

    def channel_target(self, server: str) -> str:
        return self.addresses[server]

    def channel(self, server: str) -> grpc.Channel:
        """A synchronous channel to `server` with the credentials it is called with."""
        credentials = self.credentials[server]
        options = []
        if credentials.server_name:
            options.append(("grpc.ssl_target_name_override", credentials.server_name))
        return grpc.secure_channel(
            self.addresses[server], channel_credentials(credentials), options
        )


async def _running(api: Client) -> bool:
    pod = await api.pods.get("web", "default")
    return bool(pod.status.phase == "Running")


async def _pods_of(api: Client) -> str:
    return str(await api.pods.list(""))
