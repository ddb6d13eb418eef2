"""The master process: store, registries, the API server and in-process loops.

Every long-running loop runs under the master's one Supervisor
(common/supervisor.py): the store's writer (`store-writer`), the namespace
controller (`namespace-controller`), leader election (`leader-election`, its
renewal `leader-renew`), and while leading each controller and the scheduler by
its name (`replicaset`, `scheduler`, ...) with their informers (`replicaset.pods`).
A crash restarts that loop alone; a loop that gives up turns gRPC health
NOT_SERVING and /healthz 503, and `kubeling-master` exits 1.

With TLS (the default) the master makes or loads its CA and certificates
(master/cluster_ca.py) before serving, serves mutual TLS on `listen` and TLS
without client certificates on `join_listen` (Certificates/Join only), authorizes
every call (master/authz.py), keeps its certificates fresh (`certificates`) and
writes DATA_DIR/admin.conf. Its own controllers and the pod proxy call as
`kubeling:master`. Without TLS it serves plaintext on loopback only and every
caller is the local admin.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
from aiohttp import web

from kubeling.api import storage as st
from kubeling.api.errors import ApiError
from kubeling.api.kinds import ALL_KINDS, NAMESPACE, NODE, POD, SERVICE, STORAGE_CLASS
from kubeling.client import Client
from kubeling.common.httpserve import bound_port, serve_http
from kubeling.common.rpc import Server, ServerTls
from kubeling.common.supervisor import LoopFailed, Supervisor
from kubeling.common.tls import Credentials, channel_credentials
from kubeling.common.token import TokenStore
from kubeling.controllers.leaderelection import LeaderElector
from kubeling.controllers.manager import ControllerSettings, run_controllers
from kubeling.master import cluster_ca, etcd_pki
from kubeling.master.api_service import ResourceService
from kubeling.master.authz import Authorizer
from kubeling.master.binding import PodBinder
from kubeling.master.certificates import SERVICE_NAME as CERTIFICATES_SERVICE
from kubeling.master.certificates import CertificatesService
from kubeling.master.codec import ProtoCodec
from kubeling.master.event_ttl import DEFAULT_EVENT_TTL, EventExpiry
from kubeling.master.limits import (
    DEFAULT_MAX_REQUESTS_INFLIGHT,
    DEFAULT_MAX_REQUESTS_INFLIGHT_PER_CLIENT,
    DEFAULT_MAX_SESSIONS_PER_CLIENT,
    DEFAULT_MAX_WATCHES_PER_CLIENT,
    RequestLimits,
    identity_key,
    peer_host,
)
from kubeling.master.namespace_controller import NamespaceController
from kubeling.master.pod_proxy import PodProxy
from kubeling.master.registry import Registry, namespace_checker, register_indexes
from kubeling.master.store.base import Store
from kubeling.master.store.etcd import DEFAULT_PREFIX, EtcdStore, EtcdStoreError, parse_endpoints
from kubeling.master.store.sqlite import SqliteStore
from kubeling.master.strategies import DEFAULT_SERVICE_CIDR, ServiceStrategy, strategy_for
from kubeling.master.tokens import SERVICE_NAME as TOKENS_SERVICE
from kubeling.master.tokens import TokensService
from kubeling.scheduler.scheduler import Scheduler
from kubeling.v1 import core_pb2, storage_pb2

log = structlog.get_logger(__name__)

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-node-lease")

# How often a running master checks whether its own certificates need remaking.
CERT_CHECK_INTERVAL = 12 * 3600.0

# /metrics, /healthz, /livez: kube-controller-manager's port.
DEFAULT_METRICS_PORT = 10257


@dataclass
class MasterConfig:
    listen: str = "0.0.0.0:6443"
    data_dir: Path = field(default_factory=lambda: Path("/var/lib/kubeling/master"))
    service_cidr: str = DEFAULT_SERVICE_CIDR
    history: int = 10_000
    bookmark_interval: float = 10.0
    # Controllers (and the scheduler) run in the master by default: "*" for all,
    # names to pick some, empty for none (then they can run as their own process).
    controllers: set[str] = field(default_factory=lambda: {"*"})
    controller_settings: ControllerSettings = field(default_factory=ControllerSettings)
    # Mutual TLS with the cluster CA of data_dir/pki (master/cluster_ca.py) and
    # authorization of every call (master/authz.py). False: plaintext, loopback and
    # unix sockets only, every caller the local admin, no joining.
    tls: bool = True
    # HOST:PORT of the join port (TLS without a client certificate, for
    # Certificates/Join with a bootstrap token); "" serves none.
    join_listen: str = ""
    # More names and IPs for the serving certificate.
    tls_sans: list[str] = field(default_factory=list)
    # How long the certificates the master signs are valid (seconds).
    cert_validity: float = cluster_ca.DEFAULT_CERT_VALIDITY
    # The address other machines reach this master at (SANs, admin.conf, join command).
    advertise_address: str = ""
    # Accepted and ignored: bootstrap tokens are always on (common/token.py).
    bootstrap_tokens: bool = False
    # HOST:PORT for /metrics /healthz /livez ("" serves none; port 0 picks one).
    metrics_bind: str = ""
    # A loop that crashes this often within 5 minutes gives up: the master is unhealthy.
    loop_crash_limit: int = 10
    # Events are deleted this many seconds after their last write (master/event_ttl.py).
    event_ttl: float = DEFAULT_EVENT_TTL
    # Short requests served at once, and watches per client (master/limits.py); 0: no limit.
    max_requests_inflight: int = DEFAULT_MAX_REQUESTS_INFLIGHT
    max_watches_per_client: int = DEFAULT_MAX_WATCHES_PER_CLIENT
    max_requests_inflight_per_client: int = DEFAULT_MAX_REQUESTS_INFLIGHT_PER_CLIENT
    # Pod logs/exec/attach/port-forward calls open per client (each holds a kubelet call).
    max_sessions_per_client: int = DEFAULT_MAX_SESSIONS_PER_CLIENT
    # Where the cluster's state lives: "sqlite" (DATA_DIR/state.db, this master
    # alone) or "etcd://HOST:PORT,..." (shared by every master given the same list).
    store: str = "sqlite"
    etcd_prefix: str = DEFAULT_PREFIX
    # TLS to etcd: these files, or by default a client certificate from the cluster
    # CA (master/etcd_pki.py). Plaintext only for an --insecure master on loopback.
    etcd_cafile: Path | None = None
    etcd_certfile: Path | None = None
    etcd_keyfile: Path | None = None


def self_address(listen: str, port: int) -> str:
    """Where the master's own controllers reach its API: the first listen address,
    with a wildcard host replaced by loopback (and the bound port, for port 0)."""
    first = listen.split(",")[0].strip()
    if first.startswith("unix:"):
        return first
    host = first.rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def loopback_only(listen: str) -> bool:
    """Whether every listen address is loopback or a unix socket: then no other
    machine can register a Node, and loopback node addresses (tests, a one-machine
    setup) are accepted."""
    for address in (a.strip() for a in listen.split(",")):
        if address.startswith("unix:"):
            continue
        host = address.rpartition(":")[0].strip("[]")
        if host == "localhost":
            continue
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            return False
    return True


def make_store(config: MasterConfig, supervisor: Supervisor | None = None) -> Store:
    """The configured backend (not yet opened); EtcdStoreError for a bad --store or
    an etcd that would be reached without TLS beyond loopback."""
    if config.store in ("", "sqlite"):
        return SqliteStore(
            config.data_dir / "state.db",
            ProtoCodec.for_master(config.data_dir, config.tls),
            config.history,
            supervisor,
        )
    if not config.store.startswith("etcd://"):
        raise EtcdStoreError(f"--store {config.store!r}: expected sqlite or etcd://HOST:PORT,...")
    endpoints = parse_endpoints(config.store)
    files = (config.etcd_cafile, config.etcd_certfile, config.etcd_keyfile)
    credentials: grpc.ChannelCredentials | None = None
    if any(files):
        if not all(files):
            raise EtcdStoreError("--etcd-cafile, --etcd-certfile and --etcd-keyfile go together")
        ca, cert, key = (f.read_bytes() for f in files if f is not None)
        credentials = channel_credentials(Credentials(ca, cert, key))
    elif config.tls:
        credentials = etcd_pki.ensure_etcd_client(config.data_dir).channel_credentials()
    elif not loopback_only(",".join(endpoints)):
        raise EtcdStoreError(
            "etcd beyond loopback needs TLS: run the master with TLS (its etcd client "
            "certificate comes from the cluster CA) or give --etcd-cafile/--etcd-certfile/"
            "--etcd-keyfile"
        )
    return EtcdStore(
        endpoints,
        ProtoCodec.for_master(config.data_dir, config.tls),
        credentials=credentials,
        prefix=config.etcd_prefix,
        history=config.history,
        supervisor=supervisor,
    )


class Master:
    def __init__(self, config: MasterConfig) -> None:
        self.config = config
        self.supervisor = Supervisor("kubeling-master", max_crashes=config.loop_crash_limit)
        self.supervisor.on_failure(self._loop_failed)
        self.store: Store = make_store(config, self.supervisor)
        register_indexes(self.store)
        check = namespace_checker(self.store)
        self.registries: dict[str, Registry] = {
            kind.name: Registry(
                kind,
                self.store,
                strategy_for(
                    kind,
                    config.service_cidr,
                    loopback_only(config.listen),
                    cluster_cidr=config.controller_settings.cluster_cidr,
                ),
                namespace_check=check,
                bookmark_interval=config.bookmark_interval,
            )
            for kind in ALL_KINDS
        }
        # Methods beyond CRUD/Watch, by kind name (the Pods service's Logs and Exec).
        self.extra_methods: dict[str, dict[str, Any]] = {}
        # The CA and the master's own credentials: made (or renewed) before serving.
        self.ca: cluster_ca.ClusterCa | None = None
        if config.tls:
            self.ca = self._load_ca()
        credentials = self.ca.master_credentials() if self.ca is not None else None
        self.pod_proxy = PodProxy(
            self.registries[POD.name], self.registries[NODE.name], credentials
        )
        binder = PodBinder(self.registries[POD.name], self.registries[NODE.name])
        self.extra_methods[POD.name] = {**self.pod_proxy.methods(), **binder.methods()}
        self.tokens = TokenStore(TokensService.records_in(self.store), config.data_dir)
        self.authz = Authorizer(self.registries, enabled=config.tls)
        self.limits = RequestLimits(
            config.max_requests_inflight,
            config.max_watches_per_client,
            # Clients are who their certificate says; without TLS, where they call from.
            identity_key if config.tls else peer_host,
            config.max_requests_inflight_per_client,
            config.max_sessions_per_client,
        )
        self.server: Server | None = None
        self.elector: LeaderElector | None = None
        self.metrics: web.AppRunner | None = None
        self.metrics_port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._unhealthy: asyncio.Task[None] | None = None

    def _load_ca(self) -> cluster_ca.ClusterCa:
        config = self.config
        return cluster_ca.load_or_create(
            config.data_dir,
            [*config.listen.split(","), *config.join_listen.split(",")],
            config.advertise_address,
            config.tls_sans,
            config.cert_validity,
        )

    async def _refresh_certificates(self) -> None:
        """Remake the master's certificates that near their end while it runs: the
        server picks up its files at the next handshake, the pod proxy dials with
        the new client certificate from then on (the controllers' client takes it
        at their next restart)."""
        while True:
            await asyncio.sleep(CERT_CHECK_INTERVAL)
            self.ca = await asyncio.to_thread(self._load_ca)
            self.pod_proxy.use_credentials(self.ca.master_credentials())
            self._write_admin_conf()

    def _write_admin_conf(self) -> None:
        """admin.conf with the current admin certificate (unchanged: not rewritten)."""
        if self.ca is not None and self.server is not None:
            server = cluster_ca.admin_server(
                self.config.listen, self.server.port, self.config.advertise_address
            )
            cluster_ca.write_admin_conf(self.ca, self.admin_conf, server)

    def healthy(self) -> bool:
        """False once a supervised loop gave up (the process is about to exit), or
        while the store cannot serve (etcd unreachable for a while)."""
        return not self.supervisor.failed.is_set() and self.store.healthy()

    def _loop_failed(self, failure: LoopFailed) -> None:
        if self.server is not None:
            # Every service NOT_SERVING, and it stays so.
            health = self.server.health.enter_graceful_shutdown()
            self._unhealthy = asyncio.ensure_future(health)

    async def start(self) -> int:
        await self.store.open()
        services = self.registries[SERVICE.name]
        assert isinstance(services.strategy, ServiceStrategy)
        # Records for Services that predate them; old per-master token files moved in.
        await services.strategy.repair()
        await self.tokens.import_legacy()
        await self._ensure_namespaces()
        await self._ensure_storage_class()
        # Loopback SANs only when no other machine can reach either port.
        reachable = ",".join(a for a in (self.config.listen, self.config.join_listen) if a)
        certificates = CertificatesService(self.ca, self.tokens, loopback_only(reachable))
        tls = None
        if self.ca is not None:
            tls = ServerTls(self.ca.server, without_client_cert=self.config.join_listen)
        self.server = Server(
            self.config.listen,
            [
                *(
                    ResourceService(r, self.limits, self.authz).handler(
                        self.extra_methods.get(r.kind.name)
                    )
                    for r in self.registries.values()
                ),
                TokensService(self.tokens, local_only=not self.config.tls).handler(self.authz),
                grpc.method_handlers_generic_handler(
                    CERTIFICATES_SERVICE,
                    self.authz.wrap_service(CERTIFICATES_SERVICE, certificates.methods()),
                ),
            ],
            [*(kind.service for kind in ALL_KINDS), TOKENS_SERVICE, CERTIFICATES_SERVICE],
            tls=tls,
        )
        await self.server.start()
        self._write_admin_conf()
        if self.config.metrics_bind:
            await self._serve_metrics(self.config.metrics_bind)
        namespaces = NamespaceController(self.registries)
        self._tasks.append(self.supervisor.start("namespace-controller", namespaces.run))
        expiry = EventExpiry(self.store, self.config.event_ttl)
        self._tasks.append(self.supervisor.start("event-ttl", expiry.run))
        # Leaked ClusterIP/node port records (a master killed mid-create) go back.
        self._tasks.append(
            self.supervisor.start("service-allocation-repair", services.strategy.repair_loop)
        )
        if self.ca is not None:
            self._tasks.append(self.supervisor.start("certificates", self._refresh_certificates))
        if self.config.controllers:
            own = self_address(self.config.listen, self.server.port)
            self._tasks.append(
                self.supervisor.start("leader-election", lambda: self._elected_controllers(own))
            )
        log.info(
            "master serving",
            listen=self.config.listen,
            port=self.server.port,
            tls=self.config.tls,
            join_port=self.server.join_port or None,
        )
        return int(self.server.port)

    @property
    def admin_conf(self) -> Path:
        """The admin credential (client/config.py) written at start with TLS."""
        return self.config.data_dir / "admin.conf"

    @property
    def join_port(self) -> int:
        return self.server.join_port if self.server is not None else 0

    def own_credentials(self) -> Credentials | None:
        """What the master's own clients present: its `kubeling:master` identity."""
        return self.ca.master_credentials() if self.ca is not None else None

    async def _serve_metrics(self, bind: str) -> None:
        try:
            self.metrics = await serve_http(bind, DEFAULT_METRICS_PORT, healthz=self.healthy)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {bind}: {exc}") from exc
        self.metrics_port = bound_port(self.metrics)
        log.info("metrics serving", bind=bind, port=self.metrics_port)

    async def _elected_controllers(self, own: str) -> None:
        """Controllers and scheduler run only while this master holds the
        kube-system/kubeling-controller-manager Lease, so several masters can run
        with one active set."""
        credentials = self.own_credentials()
        async with Client(own, credentials=credentials) as api:
            holder = f"{socket.gethostname()}_{own}_{os.getpid()}"
            self.elector = LeaderElector(api, identity=holder, supervisor=self.supervisor)
            await self.elector.run(
                lambda: run_controllers(
                    own,
                    self.config.controllers,
                    self.config.controller_settings,
                    supervisor=self.supervisor,
                    # The scheduler is a loop like the controllers, registered here so
                    # that the controllers and the scheduler never import each other.
                    extra={"scheduler": Scheduler},
                    credentials=credentials,
                )
            )
        # The controllers run until cancelled: ending otherwise is a crash to restart.
        raise RuntimeError("the controllers stopped on their own")

    async def _ensure_namespaces(self) -> None:
        namespaces = self.registries[NAMESPACE.name]
        for name in SYSTEM_NAMESPACES:
            if self.store.get(NAMESPACE.key("", name)) is None:
                with contextlib.suppress(ApiError):
                    ns = core_pb2.Namespace()
                    ns.metadata.name = name
                    await namespaces.create(ns)

    async def _ensure_storage_class(self) -> None:
        """The default `local-path` StorageClass (as k3s ships it), made once: an
        admin may change its default-class annotation or delete it, and a master
        restart makes it again only when it is gone."""
        if self.store.get(STORAGE_CLASS.key("", st.LOCAL_PATH_CLASS)) is not None:
            return
        sc = storage_pb2.StorageClass(
            provisioner=st.LOCAL_PATH_PROVISIONER,
            reclaim_policy=st.RECLAIM_DELETE,
            volume_binding_mode=st.WAIT_FOR_FIRST_CONSUMER,
        )
        sc.metadata.name = st.LOCAL_PATH_CLASS
        sc.metadata.annotations[st.DEFAULT_CLASS_ANNOTATION] = "true"
        with contextlib.suppress(ApiError):
            await self.registries[STORAGE_CLASS.name].create(sc)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, LoopFailed):
                await task
        if self.server is not None:
            await self.server.stop()
        await self.pod_proxy.close()
        # The store's writer goes last: requests still being answered can write.
        await self.store.close()
        await self.supervisor.stop()
        if self.metrics is not None:
            await self.metrics.cleanup()
