"""Allocations and bootstrap tokens with two masters on one real etcd: each master
has its own watch cache, which may lag the other's writes, so only etcd's
create-if-absent decides who holds a ClusterIP or node port, and a token made
through one master's Tokens API is accepted by Join on the other."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from kubeling.client import Client
from kubeling.common import identity, pki
from kubeling.common.token import TokenStore
from kubeling.master import cluster_ca
from kubeling.master.certificates import CertificatesService
from kubeling.master.codec import ProtoCodec
from kubeling.master.store.base import Store
from kubeling.master.store.etcd import EtcdStore
from kubeling.master.tokens import StoreTokenRecords, TokensService
from kubeling.v1 import certificates_pb2, core_pb2, tokens_pb2
from tests.support.etcd import EtcdCluster, running_etcd
from tests.support.inprocess import in_process_master

# .2 to .14: 13 addresses, so two masters that trusted their own memory would clash.
SMALL_CIDR = "10.99.0.0/28"
IP_COUNT = 13


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with running_etcd(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@contextlib.asynccontextmanager
async def two_masters(tmp_path: Path, etcd: EtcdCluster) -> AsyncIterator[list[Client]]:
    prefix = f"/kubeling-{uuid.uuid4().hex[:8]}"
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                in_process_master(
                    tmp_path / f"m{i}",
                    store=f"etcd://{etcd.endpoints}",
                    etcd_prefix=prefix,
                    service_cidr=SMALL_CIDR,
                )
            )
            for i in range(2)
        ]


def service(name: str, node_port: bool = False) -> core_pb2.Service:
    svc = core_pb2.Service()
    svc.metadata.name = name
    svc.metadata.namespace = "default"
    svc.spec.selector["app"] = name
    svc.spec.ports.add(port=80)
    if node_port:
        svc.spec.type = "NodePort"
    return svc


async def test_two_masters_on_etcd_never_hand_out_the_same_ip_or_port(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    async with two_masters(tmp_path, etcd) as (a, b):
        made = await asyncio.gather(
            *(
                (a if i % 2 else b).services.create(service(f"s{i}", node_port=True))
                for i in range(IP_COUNT)
            )
        )
        ips = {svc.spec.cluster_ip for svc in made}
        assert len(ips) == IP_COUNT
        ports = {svc.spec.ports[0].node_port for svc in made}
        assert len(ports) == IP_COUNT
        for client in (a, b):
            with pytest.raises(grpc.aio.AioRpcError) as full:
                await client.services.create(service("one-too-many"))
            assert full.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "range is full" in (full.value.details() or "")
        # Freed through A, taken through B (which asks for exactly that IP).
        gone = made[0]
        await a.services.delete(gone.metadata.name, "default")
        again = service("again")
        again.spec.cluster_ip = gone.spec.cluster_ip
        assert (await b.services.create(again)).spec.cluster_ip == gone.spec.cluster_ip
        # An IP held through B is refused through A, naming the field.
        clash = service("clash")
        clash.spec.cluster_ip = gone.spec.cluster_ip
        with pytest.raises(grpc.aio.AioRpcError) as taken:
            await a.services.create(clash)
        assert taken.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "spec.clusterIP" in (taken.value.details() or "")
        # Internal records are served by no API.
        listed = await a.services.list("")
        assert {s.metadata.name for s in listed.items} == {
            *(s.metadata.name for s in made[1:]),
            "again",
        }


class Peer:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


async def test_a_token_made_on_one_master_joins_on_the_other(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    """Each master's own etcd store and watch cache: Tokens/Create on A, then at
    once Certificates/Join on B (which catches up with etcd for an unknown ID)."""
    prefix = f"/kubeling-{uuid.uuid4().hex[:8]}"
    stores: list[Store] = []
    try:
        for _ in range(2):
            store = EtcdStore(etcd.endpoints.split(","), ProtoCodec(), prefix=prefix)
            await store.open()
            stores.append(store)
        a, b = (TokenStore(StoreTokenRecords(s)) for s in stores)
        joins = CertificatesService(
            cluster_ca.load_or_create(tmp_path, ["127.0.0.1:0"]), b, loopback_only=True
        )
        for i in range(5):
            made = await TokensService(a).create(tokens_pb2.CreateTokenRequest(), Peer("unix:"))
            request = certificates_pb2.JoinRequest(
                token=made.token,
                role="node",
                node_name=f"w{i}",
                csr=pki.make_csr(
                    pki.make_key(), f"{identity.NODE_PREFIX}w{i}", (identity.GROUP_NODES,)
                ),
                addresses=["127.0.0.1"],
            )
            reply = await joins.join(request, Peer("ipv4:10.0.0.5:1"))
            assert pki.cert_info(reply.certificate).common_name == f"system:node:w{i}"
        assert [t.id for t in b.list()] == [t.id for t in a.list()]
    finally:
        for store in stores:
            await store.close()
