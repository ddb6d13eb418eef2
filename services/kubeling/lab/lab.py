"""The lab: a whole cluster on one machine, one network namespace per node.

    [kl-net]  bridge klbr0 10.99.0.1/24, the master (10.99.0.1:6443, join port
       |      10.99.0.1:6444, and a unix socket)
       |---- veth ---- [kl-worker-1] eth0 10.99.0.11: containerd, kubelet, kube-proxy,
       |                             cni0 with the node's pod CIDR (from the master)
       |---- veth ---- [kl-worker-2] eth0 10.99.0.12: ...

Security is as on real machines: the master serves mutual TLS only (its CA made at
its first start in `master/pki`), and the nodes join as kubeadm's do. The lab
creates a bootstrap token over TLS with the master's admin credential, writes it
to a 0600 file per worker (`nodes/NAME/join-token`) and starts the kubelet and
kube-proxy with `--token-file`, `--join-address 10.99.0.1:6444` and
`--discovery-token-ca-cert-hash` (the CA's pin): each checks the CA before it sends
the token, and stores its own certificate (`nodes/NAME/{kubelet,proxy}-pki`, 0600).
No secret is on a command line or in a log. The CLI reaches the master through its
unix socket as the master's admin: `admin.conf` in the lab's folder names the
socket and the master's `pki/admin.{crt,key}` (nothing secret is copied), and
`kubeling lab up` makes it the default (`~/.kubeling/config`).

Every process is a real, separate process (the ones a real node runs), started in its
node's namespace with `nsenter --net` (`ip netns exec` remounts /sys and hides the
cgroup mounts from runc). Nodes route to each other's pod CIDRs over the lab bridge
(the kubelets' `--sync-pod-routes`, as on real machines on one network).
No namespace of the lab has a default route, and the root namespace is not touched
(the CLI reaches the master through its unix socket), so nothing in the lab has a
route off the machine.

Several masters (`--masters N --store etcd`): the bridge stays in kl-net (without
an address), and each master gets its own namespace on it, with its etcd member
beside it, as on N machines:

    [kl-net]  bridge klbr0
       |---- veth ---- [kl-master-1] eth0 10.99.0.1: kubeling-master (6443, join 6444,
       |                             unix socket masters/master-1.sock), etcd-1
       |                             (clients https://10.99.0.1:2379, peers :2380)
       |---- veth ---- [kl-master-2] eth0 10.99.0.2: ...
       |---- veth ---- [kl-worker-1] eth0 10.99.0.11: ...

All masters share master-1's cluster CA (its `ca.crt`/`ca.key` copied into the
others' data dirs before their first start, as an operator would), so the nodes'
certificates and the admin's are good on every master. etcd trusts only the etcd CA
derived from that CA (master/etcd_pki.py): each member's client and peer
certificates are issued from master-1's data dir, and each master makes its own
etcd client certificate. Every master is given every member
(`--store etcd://10.99.0.1:2379,...`) and the nodes every master
(`--master 10.99.0.1:6443,10.99.0.2:6443,...`, the join ports likewise). The CLI
still has one socket, `master.sock`: there a symlink to a running master's own
socket, which the lab moves to another running master when it stops or kills the
one it points to (what a load balancer's health check does). `stop`, `start` and
`kill` take `master-N` and `etcd-N` as they take nodes.

Images: Debian's `docker-registry` runs on 10.99.0.1:5000 (kl-net, or kl-master-1
with several masters) with its own config and storage under `registry/`; the lab's
images are pushed to it once, at `up`. Every node's containerd takes it as the mirror
for docker.io (`nodes/NAME/certs.d/docker.io/hosts.toml`), so `image: busybox` is
pulled for real through CRI PullImage; only the pause (sandbox) image is imported on
each node, as it must be there before any pull. The upstream named in hosts.toml is
never reached: nothing has a route off the machine.

Add-ons (kubeling.lab.addons), as kubeadm installs them: once the nodes have their
pod CIDRs, the lab applies `deploy/addons/dns.yaml` (the cluster DNS, by default;
the kubelets then run with `--cluster-dns 10.96.0.10`) and, with `--proxy=pod`,
`deploy/addons/kube-proxy.yaml` (a DaemonSet instead of a proxy process per node),
and waits until they serve. Both run the `kubeling` image (kubeling.node.imagebuild,
built into the shared cache when missing), pushed to the registry with every other
provided image already built. The masters' namespaces route each pod CIDR via its
node, so pods reach the masters with their own addresses (the DNS pods do).

Everything the lab makes is recorded in `STATE_DIR/lab.json`, and `down()` removes it
all: processes (by PID, checked against their command line), pods (through CRI, the
add-ons' with them), mounts, namespaces (with the nftables tables in them) and files.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc

from kubeling.client import Client
from kubeling.client.config import ClientConfig
from kubeling.common import identity, pki
from kubeling.common.etcd_member import EtcdMemberFiles
from kubeling.common.tls import Credentials
from kubeling.common.token import DEFAULT_TTL, write_private
from kubeling.lab import addons
from kubeling.node.containerd import (
    ContainerdError,
    ContainerdProcess,
    mounts_under,
    remove_all_sandboxes,
    remove_leftovers,
    write_containerd_config,
    write_registry_mirror,
)
from kubeling.node.images import PAUSE_IMAGE, ImageBuildError, build_images
from kubeling.node.registry import REGISTRY_BINARY, write_registry_config
from kubeling.v1 import core_pb2

LAB_NETWORK = ipaddress.IPv4Network("10.99.0.0/24")
MASTER_IP = "10.99.0.1"
MASTER_PORT = 6443
JOIN_PORT = 6444
# The name the master's serving certificate is checked against over its unix socket.
SOCKET_SERVER_NAME = "localhost"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"
BRIDGE = "klbr0"
# A node's processes, in start order (the kubelet needs containerd's socket).
COMPONENTS = ("containerd", "kubelet", "proxy")
# How kube-proxy runs: a process per node beside the kubelet (a systemd unit on real
# machines), or a DaemonSet of pods (deploy/addons/kube-proxy.yaml), as kubeadm runs it.
PROXY_MODES = ("process", "pod")
STORES = ("sqlite", "etcd")
# Masters take 10.99.0.1 to .9; workers start at .11.
MAX_MASTERS = 9
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
# The lab's image registry, the nodes' mirror for docker.io (in the namespace that
# holds 10.99.0.1: the bridge's with one master, master-1's with several).
REGISTRY_PORT = 5000
REGISTRY_ADDRESS = f"{MASTER_IP}:{REGISTRY_PORT}"


_T = TypeVar("_T")


class LabError(RuntimeError):
    pass


def default_dir() -> Path:
    return Path(os.environ.get("KUBELING_LAB_DIR") or Path.home() / ".kubeling" / "lab")


@dataclass
class Proc:
    """A process the lab started: what to check before signalling its PID."""

    pid: int
    marker: str  # a string its command line contains (PIDs get reused)

    def alive(self) -> bool:
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return False
        return self.marker.encode() in cmdline

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, os.WNOHANG)
            time.sleep(0.05)
        self.kill()

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL (a crash, as chaos tests make), and wait until it is gone."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            # Reap it when it is our child (a zombie's cmdline is empty: not alive).
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(self.pid, os.WNOHANG)
            time.sleep(0.01)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(self.pid, os.WNOHANG)


@dataclass
class NodeState:
    name: str
    netns: str
    ip: str
    host_link: str  # the veth end on the lab bridge
    pod_cidr: str = ""
    containerd: Proc | None = None
    kubelet: Proc | None = None
    proxy: Proc | None = None


@dataclass
class MasterState:
    """One of several masters (`--store etcd`): its namespace on the lab bridge, its
    process and its etcd member's (named etcd-N for master-N)."""

    name: str  # master-N
    netns: str
    ip: str
    host_link: str  # the veth end on the lab bridge
    process: Proc | None = None
    etcd: Proc | None = None

    @property
    def etcd_name(self) -> str:
        return "etcd-" + self.name.removeprefix("master-")


@dataclass
class LabState:
    prefix: str
    master_netns: str  # the bridge's (and the single master's) namespace
    nodes: list[NodeState] = field(default_factory=list)
    master: Proc | None = None  # the single master (SQLite); None with masters
    master_args: list[str] = field(default_factory=list)  # kept for restarts
    kubelet_args: list[str] = field(default_factory=list)
    proxy_args: list[str] = field(default_factory=list)
    store: str = "sqlite"
    masters: list[MasterState] = field(default_factory=list)  # with --store etcd
    registry: Proc | None = None  # docker-registry on REGISTRY_ADDRESS
    proxy_mode: str = "process"  # PROXY_MODES: "pod" starts no proxy process
    addons: list[str] = field(default_factory=list)  # installed: addons.DNS, addons.PROXY

    @property
    def cluster_dns(self) -> bool:
        """Whether the kubelets name the cluster DNS (the DNS add-on runs)."""
        return addons.DNS in self.addons

    @classmethod
    def load(cls, path: Path) -> LabState:
        raw = json.loads(path.read_text())

        def proc(value: dict[str, object] | None) -> Proc | None:
            return Proc(int(value["pid"]), str(value["marker"])) if value else None  # type: ignore[call-overload]

        masters = [
            MasterState(
                **{k: v for k, v in m.items() if k not in ("process", "etcd")},
                process=proc(m.get("process")),
                etcd=proc(m.get("etcd")),
            )
            for m in raw.get("masters", [])
        ]

        nodes = [
            NodeState(
                **{k: v for k, v in n.items() if k not in ("containerd", "kubelet", "proxy")},
                containerd=proc(n.get("containerd")),
                kubelet=proc(n.get("kubelet")),
                proxy=proc(n.get("proxy")),
            )
            for n in raw.get("nodes", [])
        ]
        return cls(
            raw["prefix"],
            raw["master_netns"],
            nodes,
            proc(raw.get("master")),
            list(raw.get("master_args", [])),
            list(raw.get("kubelet_args", [])),
            list(raw.get("proxy_args", [])),
            str(raw.get("store", "sqlite")),
            masters,
            registry=proc(raw.get("registry")),
            proxy_mode=str(raw.get("proxy_mode", "process")),
            addons=[str(a) for a in raw.get("addons", [])],
        )

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)


@dataclass
class LabOptions:
    nodes: int = 2
    prefix: str = "kl-"  # of namespace names; tests use their own
    masters: int = 1
    store: str = "sqlite"  # "etcd": a member beside each master, each in its namespace
    # Extra flags, for tests that need short grace periods.
    master_args: list[str] = field(default_factory=list)
    kubelet_args: list[str] = field(default_factory=list)
    proxy_args: list[str] = field(default_factory=list)
    # The cluster DNS add-on (deploy/addons/dns.yaml), and the kubelets' --cluster-dns.
    dns: bool = True
    proxy: str = "process"  # PROXY_MODES


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _netns_exists(name: str) -> bool:
    return Path(f"/var/run/netns/{name}").exists()


def _run_async(coro: Coroutine[object, object, _T]) -> _T:
    """Run a coroutine from the lab's synchronous code, on its own event loop (in a
    thread when the caller's thread already runs one: tests call the lab from theirs)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _stop_all(procs: list[Proc | None]) -> None:
    """SIGTERM every one first, then wait for each (SIGKILL after its timeout)."""
    running = [p for p in procs if p is not None and p.alive()]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    for proc in running:
        proc.stop()


class Lab:
    def __init__(self, directory: Path | None = None) -> None:
        self.dir = (directory or default_dir()).resolve()
        self.state_path = self.dir / "lab.json"
        self.logs = self.dir / "logs"
        self.state: LabState | None = (
            LabState.load(self.state_path) if self.state_path.exists() else None
        )

    # -- addresses -----------------------------------------------------------------

    @property
    def master_socket(self) -> Path:
        """The master's unix socket; with several masters a symlink to a running
        master's own (`master_socket_of`)."""
        return self.dir / "master.sock"

    @property
    def several(self) -> bool:
        """Whether the lab runs masters in their own namespaces (--store etcd)."""
        return self.state is not None and bool(self.state.masters)

    def master_dir(self, name: str) -> Path:
        """A master's data dir (several masters)."""
        return self.dir / "masters" / name

    def master_socket_of(self, name: str) -> Path:
        return self.dir / "masters" / f"{name}.sock"

    def etcd_dir(self, name: str) -> Path:
        """An etcd member's folder: `data` (etcd's --data-dir) and `pki`."""
        return self.dir / "etcd" / name

    def master_addresses(self, port: int) -> str:
        """Every master's HOST:PORT, comma-separated, as the nodes are given them."""
        if self.several:
            assert self.state is not None
            return ",".join(f"{m.ip}:{port}" for m in self.state.masters)
        return f"{MASTER_IP}:{port}"

    def etcd_endpoints(self) -> str:
        assert self.state is not None
        return ",".join(f"{m.ip}:{ETCD_CLIENT_PORT}" for m in self.state.masters)

    @property
    def server(self) -> str:
        """The master's address for the CLI and clients on this machine."""
        return f"unix:{self.master_socket}"

    def token_file(self, name: str) -> Path:
        """A node's bootstrap token (0600), passed as --token-file, never on argv."""
        return self.node_dir(name) / "join-token"

    @property
    def pki_dir(self) -> Path:
        """The master's CA and certificates (made by the master at its first start);
        with several masters, master-1's (the others share its CA)."""
        if self.several:
            return self.master_dir("master-1") / "pki"
        return self.dir / "master" / "pki"

    @property
    def config_path(self) -> Path:
        """The CLI's config for the lab (client/config.py): the master's socket and
        its admin credential, by path."""
        return self.dir / "admin.conf"

    def admin_files(self) -> tuple[Path, Path, Path]:
        """The CA certificate, the admin's certificate and key (for grpcurl too)."""
        return (self.pki_dir / "ca.crt", self.pki_dir / "admin.crt", self.pki_dir / "admin.key")

    def credentials(self) -> Credentials:
        """The master's admin credential, for a client on the lab's unix socket."""
        ca, cert, key = (path.read_bytes() for path in self.admin_files())
        return Credentials(ca, cert, key, SOCKET_SERVER_NAME)

    def client(self, timeout: float | None = 20.0) -> Client:
        """An asyncio client for the lab's master, as its admin."""
        return Client(self.server, timeout=timeout, credentials=self.credentials())

    def ca_pin(self) -> str:
        """--discovery-token-ca-cert-hash for the lab's nodes."""
        return pki.ca_pin(self.admin_files()[0].read_bytes())

    def _admin_channel(self, target: str = "") -> grpc.Channel:
        """A blocking channel to the master (or `target`, one master's socket) as its
        admin (lab code is synchronous)."""
        creds = self.credentials()
        return grpc.secure_channel(
            target or self.server,
            grpc.ssl_channel_credentials(creds.ca_pem, creds.key_pem, creds.cert_pem),
            options=[("grpc.ssl_target_name_override", SOCKET_SERVER_NAME)],
        )

    def write_config(self) -> Path:
        """`admin.conf` in the lab's folder (0600): the socket and the admin's files."""
        ca, cert, key = self.admin_files()
        text = (
            f"# kubeling lab: its master as admin (KUBELING_CONFIG={self.config_path})\n"
            f"server: {self.server}\n"
            f"certificate-authority: {ca}\n"
            f"client-certificate: {cert}\n"
            f"client-key: {key}\n"
        )
        write_private(self.config_path, text)
        return self.config_path

    def node_dir(self, name: str) -> Path:
        return self.dir / "nodes" / name

    def proxy_socket(self, name: str) -> Path:
        """The node's kube-proxy API, reachable from this machine's namespace."""
        return self.node_dir(name) / "proxy.sock"

    def node(self, name: str) -> NodeState:
        state = self._require()
        for node in state.nodes:
            if node.name == name:
                return node
        raise LabError(f'no node "{name}" in the lab ({self._known()})')

    def _known(self) -> str:
        state = self._require()
        names = [n.name for n in state.nodes]
        if state.masters:
            names = [m.name for m in state.masters] + [m.etcd_name for m in state.masters] + names
        else:
            names = ["master", *names]
        return "names: " + ", ".join(names)

    def master_of(self, name: str) -> MasterState:
        """The master named `name` (master-N), or the one whose etcd member it is
        (etcd-N)."""
        for master in self._require().masters:
            if name in (master.name, master.etcd_name):
                return master
        raise LabError(f'no master or etcd member "{name}" in the lab ({self._known()})')

    def _is_master(self, name: str) -> bool:
        return any(name == m.name for m in self._require().masters)

    def _is_etcd(self, name: str) -> bool:
        return any(name == m.etcd_name for m in self._require().masters)

    def _require(self) -> LabState:
        if self.state is None:
            raise LabError(f"no lab is up (no {self.state_path}); run `kubeling lab up`")
        return self.state

    def _save(self) -> None:
        assert self.state is not None
        self.state.save(self.state_path)

    # -- processes -----------------------------------------------------------------

    def _spawn(self, netns: str, log_name: str, command: list[str], marker: str) -> Proc:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{log_name}.log").open("ab") as log:
            proc = subprocess.Popen(
                ["nsenter", f"--net=/var/run/netns/{netns}", "--", *command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # outlives `kubeling lab up`; stopped by PID
            )
        started = Proc(proc.pid, marker)
        # Until it has exec'd, /proc/PID/cmdline is ours: wait, so `down` knows it.
        deadline = time.monotonic() + 10
        while not started.alive() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return started

    def _python(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    # -- up ------------------------------------------------------------------------

    def up(self, options: LabOptions, progress: Callable[[str], None] = print) -> None:
        if self.state is not None:
            raise LabError(f"a lab is already up ({self.state_path}); `kubeling lab down` first")
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, containerd)")
        if not 1 <= options.nodes <= 200:
            raise LabError("--nodes must be between 1 and 200")
        if options.store not in STORES:
            raise LabError(f"--store must be one of {', '.join(STORES)}, not {options.store!r}")
        if not 1 <= options.masters <= MAX_MASTERS:
            raise LabError(f"--masters must be between 1 and {MAX_MASTERS}")
        if options.masters > 1 and options.store != "etcd":
            raise LabError(
                f"--masters {options.masters} needs --store etcd: on SQLite each master has "
                "its own file, so they would be separate clusters"
            )
        if options.proxy not in PROXY_MODES:
            raise LabError(
                f"--proxy must be one of {', '.join(PROXY_MODES)}, not {options.proxy!r}"
            )
        if options.store == "etcd":
            for tool in ("etcd", "etcdctl"):
                if shutil.which(tool) is None:
                    raise LabError(
                        f"{tool} is not installed (apt-get install etcd-server etcd-client)"
                    )
        prefix = options.prefix
        leftovers = sorted(p.name for p in Path("/var/run/netns").glob(f"{prefix}*"))
        if leftovers:
            raise LabError(
                f"network namespaces {', '.join(leftovers)} exist but no lab is recorded in "
                f"{self.dir} (left by a crashed lab?); remove them with `ip netns delete NAME`"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = LabState(
            prefix=prefix,
            master_netns=f"{prefix}net",
            master_args=list(options.master_args),
            kubelet_args=list(options.kubelet_args),
            proxy_args=list(options.proxy_args),
            store=options.store,
            proxy_mode=options.proxy,
            addons=([addons.PROXY] if options.proxy == "pod" else [])
            + ([addons.DNS] if options.dns else []),
        )
        self._save()
        try:
            self._up(options, progress)
        except BaseException:
            progress(f"lab up failed; removing what was made but the logs ({self.logs})")
            self.down(progress=lambda _: None, keep_logs=True)
            raise

    def _up(self, options: LabOptions, progress: Callable[[str], None]) -> None:
        state = self.state
        assert state is not None
        progress("building images (busybox, pause)")
        images = self.dir / "images"
        if not images.exists():
            build_images(images)
        provided = self._provided_images(progress)
        progress(f"lab network {LAB_NETWORK} in namespace {state.master_netns}")
        net = state.master_netns
        _ip("netns", "add", net)
        _ip("-n", net, "link", "set", "lo", "up")
        _ip("-n", net, "link", "add", BRIDGE, "type", "bridge")
        if options.store == "etcd":
            _ip("-n", net, "link", "set", BRIDGE, "up")  # masters attach like nodes
            self._up_masters(options.masters, progress)
        else:
            _ip("-n", net, "addr", "add", f"{MASTER_IP}/{LAB_NETWORK.prefixlen}", "dev", BRIDGE)
            _ip("-n", net, "link", "set", BRIDGE, "up")
            progress(
                f"master on {MASTER_IP}:{MASTER_PORT} (join port {JOIN_PORT}) and {self.server}"
            )
            self.start_master()
        self._up_registry(progress, provided)
        self.write_config()
        progress(f"cluster CA {self.ca_pin()}; admin config {self.config_path}")
        token = self._create_token(DEFAULT_TTL, "kubeling lab: the lab's nodes")
        hosts = list(LAB_NETWORK.hosts())
        for index in range(1, options.nodes + 1):
            name = f"worker-{index}"
            node = NodeState(
                name=name,
                netns=f"{state.prefix}{name}",
                ip=str(hosts[9 + index]),
                host_link=f"{state.prefix}w{index}"[:15],  # interface names: 15 bytes
            )
            state.nodes.append(node)
            self._save()
            progress(f"node {name}: namespace {node.netns}, {node.ip}")
            self._make_netns(node.netns, node.host_link, node.ip)
            self._node_routing(node)
            # Each node its own copy, as each machine would have.
            write_private(self.token_file(name), token + "\n")
            self.start_node(name)
        progress("waiting for the nodes to register and get pod CIDRs")
        self._wait_pod_cidrs()
        self._route_pod_cidrs()
        self._save()
        self._install_addons(progress)

    def _provided_images(self, progress: Callable[[str], None]) -> dict[str, Path]:
        """The provided images (kubeling.node.imagebuild) already built in the shared
        cache, to push to the lab's registry; the kubeling image is built when an
        add-on needs it and the cache has none for this kubeling's code."""
        from kubeling.node import imagebuild

        state = self._require()
        needed = bool(state.addons)
        for addon in state.addons:
            # A manifest naming another version than this kubeling builds would wait
            # out its pulls (ImagePullBackOff): say so now.
            for image in addons.manifest_images(addon):
                if imagebuild.normalize_name(image) != imagebuild.KUBELING_IMAGE:
                    raise LabError(
                        f"{addons.manifest_path(addon)} runs {image}, but this kubeling "
                        f"builds {imagebuild.KUBELING_IMAGE}: change the manifest's image"
                    )
        cache: Path = imagebuild.image_cache_dir()
        archives: dict[str, Path] = dict(imagebuild.provided_archives(cache))
        if needed and "kubeling" not in archives:
            # Cached by its inputs: built again only after kubeling itself changed.
            progress(f"building the kubeling image into {cache} (`make images` builds all)")
            try:
                archives.update(imagebuild.build_provided(["kubeling"], cache, progress))
            except ImageBuildError as exc:
                raise LabError(
                    f"the add-ons run the kubeling image, and building it failed: {exc} "
                    "(`lab up --no-dns` runs without them)"
                ) from None
            if "kubeling" not in archives:
                raise LabError(f"the kubeling image was not built into {cache}")
        # The lab's own busybox (images/busybox.tar) is the one pushed under that name.
        archives.pop("busybox", None)
        return archives

    def _route_pod_cidrs(self) -> None:
        """Routes from the masters' namespaces to each node's pod CIDR, via the node:
        pods talk to the masters (the DNS add-on, kube-proxy pods are on the node's
        own address) and the replies must find them, as a real network's router
        would route them (no masquerading: pods keep their addresses)."""
        state = self._require()
        namespaces = [m.netns for m in state.masters] or [state.master_netns]
        for netns in namespaces:
            for node in state.nodes:
                _ip("-n", netns, "route", "replace", node.pod_cidr, "via", node.ip)

    def _install_addons(self, progress: Callable[[str], None]) -> None:
        """The add-ons of `state.addons`, as pods (kubeling.lab.addons): what their
        manifests need made, the manifests applied, then waited for until they serve."""
        state = self._require()
        if not state.addons:
            return
        objects: list[core_pb2.Secret | core_pb2.ConfigMap] = []
        if addons.PROXY in state.addons:
            # No expiry: a proxy pod made later (a node started again) joins with it.
            token = self._create_token(0, "kubeling lab: kube-proxy pods (the add-on)")
            objects += addons.proxy_objects(
                token, self.master_addresses(MASTER_PORT), self.ca_pin(), CLUSTER_CIDR
            )
        if addons.DNS in state.addons:
            objects += addons.dns_objects(self._dns_client_config())

        async def install() -> dict[str, float]:
            async with self.client(timeout=30) as api:
                await addons.apply_objects(api, objects)
                for addon in state.addons:
                    path = addons.manifest_path(addon)
                    progress(f"add-on {addon}: applying {path}")
                    await addons.apply_file(api, path)
                progress(f"waiting for the add-ons to serve: {', '.join(state.addons)}")
                return await addons.wait_ready(api, state.addons, len(state.nodes))

        try:
            took = _run_async(install())
        except addons.AddonError as exc:
            raise LabError(f"{exc}; see {self.logs}") from None
        for addon, seconds in took.items():
            progress(f"add-on {addon} ready after {seconds:.1f} s")

    def _dns_client_config(self) -> str:
        """A client config for kubeling-dns: a `dns`-role certificate for user
        kube-dns (as `kubeling user add kube-dns --role dns`: the key is made here,
        only a CSR goes to the master), naming the masters as pods reach them."""
        from kubeling.v1 import certificates_pb2

        key = pki.make_key()
        csr = pki.make_csr(key, addons.DNS_USER, [identity.ROLE_GROUPS[identity.DNS]])
        request = certificates_pb2.IssueUserRequest(
            name=addons.DNS_USER, role=identity.DNS, csr=csr
        )
        with self._admin_channel() as channel:
            call = channel.unary_unary(
                "/kubeling.v1.Certificates/IssueUser",
                request_serializer=certificates_pb2.IssueUserRequest.SerializeToString,
                response_deserializer=certificates_pb2.CertificateResponse.FromString,
            )
            reply: certificates_pb2.CertificateResponse = call(request, timeout=30)
        credentials = Credentials(reply.ca, reply.certificate, key)
        return ClientConfig(self.master_addresses(MASTER_PORT), credentials).to_yaml()

    def _up_masters(self, count: int, progress: Callable[[str], None]) -> None:
        """`count` masters, each in its own namespace with an etcd member beside it."""
        state = self._require()
        hosts = list(LAB_NETWORK.hosts())
        for index in range(1, count + 1):
            master = MasterState(
                name=f"master-{index}",
                netns=f"{state.prefix}master-{index}",
                ip=str(hosts[index - 1]),
                host_link=f"{state.prefix}m{index}"[:15],  # interface names: 15 bytes
            )
            state.masters.append(master)
            self._save()  # recorded before it exists: `down` removes a half-made one
            progress(f"{master.name}: namespace {master.netns}, {master.ip}")
            self._make_netns(master.netns, master.host_link, master.ip)
        first = self.master_dir("master-1")
        progress(f"cluster CA in {first / 'pki'}, shared by {count} masters; etcd certificates")
        # `kubeling-master etcd-certs` (the operator's command) makes the cluster CA in
        # master-1's data dir, as its first start would, and each member's
        # certificates from it; its output goes to the lab's log.
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / "pki.log").open("ab") as log:
            for master in state.masters:
                made = subprocess.run(
                    self._python(
                        "kubeling.master.main",
                        "etcd-certs",
                        "--data-dir",
                        str(first),
                        "--name",
                        master.etcd_name,
                        "--address",
                        master.ip,
                        "--out",
                        str(self.etcd_dir(master.etcd_name) / "pki"),
                    ),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
                if made.returncode != 0:
                    raise LabError(f"etcd certificates failed: see {self.logs / 'pki.log'}")
        # The other masters share the cluster CA (copied, as an operator would).
        for master in state.masters[1:]:
            pki_dir = self.master_dir(master.name) / "pki"
            pki_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            for name in ("ca.key", "ca.crt"):
                write_private(pki_dir / name, (first / "pki" / name).read_text())
        progress(f"etcd: {count} members, {self.etcd_endpoints()}")
        for master in state.masters:
            # All at once: the first members wait for the others to form the cluster.
            self.start_etcd(master.etcd_name, wait=False)
        for master in state.masters:
            self._wait_etcd(master)
        progress(f"masters on {self.master_addresses(MASTER_PORT)} and {self.server}")
        for master in state.masters:
            self.start_master(master.name, wait=False)
        for master in state.masters:
            self._wait_master(master.name)
        self._point_socket()

    # -- the image registry -------------------------------------------------------------

    @property
    def registry_netns(self) -> str:
        state = self._require()
        return state.masters[0].netns if state.masters else state.master_netns

    @property
    def sandbox_images(self) -> Path:
        """What each kubelet imports at start: only the pause image (the sandbox
        image must be there before any pull); busybox comes from the registry."""
        return self.dir / "images" / "sandbox"

    def _up_registry(self, progress: Callable[[str], None], provided: dict[str, Path]) -> None:
        """Debian's docker-registry on 10.99.0.1:5000 with its own config and storage
        under the lab dir (the package's own service plays no part), and the lab's
        images pushed to it once, from inside its namespace (the host has no route
        to the lab network)."""
        state = self._require()
        images = self.dir / "images"
        self.sandbox_images.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(images / "pause.tar", self.sandbox_images / "pause.tar")
        if not Path(REGISTRY_BINARY).exists():
            # Still a working lab (machines set up before the registry came): busybox
            # imported on each node, and pods warn that pulling it failed.
            progress(
                f"no image registry: {REGISTRY_BINARY} is not installed (apt-get install "
                "docker-registry); busybox is imported on each node instead"
            )
            shutil.copyfile(images / "busybox.tar", self.sandbox_images / "busybox.tar")
            for name, archive in provided.items():
                # Linked, not copied: the kubelets import from the shared cache.
                link = self.sandbox_images / f"provided-{name.replace(':', '-')}.tar"
                link.symlink_to(archive)
            return
        base = self.dir / "registry"
        base.mkdir(parents=True, exist_ok=True)
        config = write_registry_config(
            base / "config.yml", addr=REGISTRY_ADDRESS, root=base / "data"
        )
        progress(f"image registry on {REGISTRY_ADDRESS} (namespace {self.registry_netns})")
        state.registry = self._spawn(
            self.registry_netns, "registry", [REGISTRY_BINARY, "serve", str(config)], str(config)
        )
        self._save()
        archives = [str(images / "busybox.tar"), str(images / "pause.tar")]
        archives += [str(path) for path in provided.values()]
        if provided:
            progress(f"pushing the provided images: {', '.join(sorted(provided))}")
        with (self.logs / "registry-push.log").open("ab") as log:
            pushed = subprocess.run(
                [
                    "nsenter", f"--net=/var/run/netns/{self.registry_netns}", "--",
                    *self._python(
                        "kubeling.node.registry", "push",
                        "--registry", REGISTRY_ADDRESS,
                        "--plain-http-network", str(LAB_NETWORK),
                        "--wait", "30",
                        *archives,
                    ),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )  # fmt: skip
        if pushed.returncode != 0:
            raise LabError(f"pushing the lab's images failed: see {self.logs}/registry-push.log")

    def start_etcd(self, name: str, wait: bool = True) -> None:
        """Start etcd member `name` (etcd-N), again after a stop or kill: same data,
        same flags (etcd ignores the --initial-* ones once it has data)."""
        state = self._require()
        master = self.master_of(name)
        if master.etcd is not None and master.etcd.alive():
            raise LabError(f"{name} already runs (PID {master.etcd.pid})")
        base = self.etcd_dir(name)
        files = EtcdMemberFiles(base / "pki", name)
        client = f"https://{master.ip}:{ETCD_CLIENT_PORT}"
        peer = f"https://{master.ip}:{ETCD_PEER_PORT}"
        cluster = ",".join(f"{m.etcd_name}=https://{m.ip}:{ETCD_PEER_PORT}" for m in state.masters)
        master.etcd = self._spawn(
            master.netns,
            name,
            [
                shutil.which("etcd") or "etcd",
                "--name", name,
                "--data-dir", str(base / "data"),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", cluster,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", f"kubeling-lab-{state.prefix}",
                "--logger", "zap",
                *files.flags(),
            ],
            f"--name {name} --data-dir {base / 'data'}",
        )  # fmt: skip
        self._save()
        if wait:
            self._wait_etcd(master)

    def _wait_etcd(self, master: MasterState, timeout: float = 60.0) -> None:
        """Until the member answers a linearizable read (it is in a cluster with a
        leader), asked with etcdctl from its namespace."""
        # The member's own server certificate is a client certificate too; no
        # master's files are touched (a master remakes its own as it starts).
        files = EtcdMemberFiles(self.etcd_dir(master.etcd_name) / "pki", master.etcd_name)
        command = self.exec_command(
            master.name,
            [
                shutil.which("etcdctl") or "etcdctl",
                "--endpoints", f"https://{master.ip}:{ETCD_CLIENT_PORT}",
                "--cacert", str(files.ca),
                "--cert", str(files.server_cert),
                "--key", str(files.server_key),
                "--command-timeout", "2s",
                "endpoint", "health",
            ],
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode == 0:
                return
            log = self.logs / f"{master.etcd_name}.log"
            if master.etcd is None or not master.etcd.alive():
                raise LabError(f"{master.etcd_name} exited; see {log}")
            if time.monotonic() > deadline:
                raise LabError(
                    f"{master.etcd_name} is not healthy: {done.stderr.strip()[-300:]}; see {log}"
                )
            time.sleep(0.2)

    def _point_socket(self) -> None:
        """Point `master.sock` at a running master's socket: the one it names while
        that runs, else the first running one (left as it is when none runs)."""
        state = self._require()
        running = [m for m in state.masters if m.process is not None and m.process.alive()]
        with contextlib.suppress(OSError):
            current = os.readlink(self.master_socket)
            if any(current == str(self.master_socket_of(m.name)) for m in running):
                return
        if not running:
            return
        tmp = self.dir / ".master.sock.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.master_socket_of(running[0].name))
        tmp.replace(self.master_socket)  # atomic: a client never finds no socket

    def start_master(self, name: str = "master", wait: bool = True) -> None:
        """Start the master (again, after `kill("master")`: same data, same flags)
        and wait until it serves; with several masters, master `name`."""
        state = self._require()
        if state.masters:
            self._start_one_of_masters(name, wait)
            return
        if state.master is not None and state.master.alive():
            raise LabError(f"the master already runs (PID {state.master.pid})")
        listen = f"{MASTER_IP}:{MASTER_PORT},{self.server}"
        state.master = self._spawn(
            state.master_netns,
            "master",
            self._python(
                "kubeling.master.main",
                "--listen", listen,
                "--join-listen", f"{MASTER_IP}:{JOIN_PORT}",
                # Every address the nodes use (listen IPs are in the SANs anyway).
                "--tls-san", MASTER_IP,
                "--data-dir", str(self.dir / "master"),
                "--service-cidr", SERVICE_CIDR,
                "--cluster-cidr", CLUSTER_CIDR,
                *state.master_args,
            ),
            str(self.dir / "master"),
        )  # fmt: skip
        self._save()
        if wait:
            self._wait_master()

    def _start_one_of_masters(self, name: str, wait: bool) -> None:
        master = self.master_of(name)
        if name != master.name:
            raise LabError(f'"{name}" is an etcd member, not a master')
        if master.process is not None and master.process.alive():
            raise LabError(f"{name} already runs (PID {master.process.pid})")
        data_dir = self.master_dir(name)
        master.process = self._spawn(
            master.netns,
            name,
            self._python(
                "kubeling.master.main",
                "--listen", f"{master.ip}:{MASTER_PORT},unix:{self.master_socket_of(name)}",
                "--join-listen", f"{master.ip}:{JOIN_PORT}",
                "--tls-san", master.ip,
                "--data-dir", str(data_dir),
                "--service-cidr", SERVICE_CIDR,
                "--cluster-cidr", CLUSTER_CIDR,
                # Every member: the master uses whichever answers.
                "--store", f"etcd://{self.etcd_endpoints()}",
                *self._require().master_args,
            ),
            f"--data-dir {data_dir} --service-cidr",
        )  # fmt: skip
        self._save()
        if wait:
            self._wait_master(name)
            self._point_socket()

    def _wait_master(self, name: str = "master", timeout: float = 60.0) -> None:
        """Until the master (or master `name`) answers health checks as SERVING."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        state = self._require()
        deadline = time.monotonic() + timeout
        log = self.logs / f"{name}.log"
        failed = LabError(f"{'the master' if name == 'master' else name} did not start; see {log}")
        target, proc = "", state.master
        if state.masters:
            master = self.master_of(name)
            target, proc = f"unix:{self.master_socket_of(name)}", master.process
        # The master makes its CA and the admin credential at its first start.
        while not all(path.exists() for path in self.admin_files()):
            if time.monotonic() > deadline:
                raise failed
            time.sleep(0.1)
        with self._admin_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                with contextlib.suppress(grpc.RpcError):
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        return
                if time.monotonic() > deadline or (proc is not None and not proc.alive()):
                    raise failed
                time.sleep(0.1)

    def _create_token(self, ttl: float, description: str) -> str:
        """A bootstrap token from the master (kubeling token create), as its admin."""
        from google.protobuf.duration_pb2 import Duration

        from kubeling.v1 import tokens_pb2

        request = tokens_pb2.CreateTokenRequest(
            ttl=Duration(seconds=int(ttl)), description=description
        )
        with self._admin_channel() as channel:
            call = channel.unary_unary(
                "/kubeling.v1.Tokens/Create",
                request_serializer=tokens_pb2.CreateTokenRequest.SerializeToString,
                response_deserializer=tokens_pb2.CreateTokenResponse.FromString,
            )
            reply: tokens_pb2.CreateTokenResponse = call(request, timeout=30)
        return reply.token

    def _join_args(self, name: str, cert_dir: Path) -> list[str]:
        """How a node's kubelet or proxy joins: no secret here, only the token's file."""
        return [
            "--join-address", self.master_addresses(JOIN_PORT),
            "--token-file", str(self.token_file(name)),
            "--discovery-token-ca-cert-hash", self.ca_pin(),
            "--cert-dir", str(cert_dir),
        ]  # fmt: skip

    def _make_netns(self, netns: str, host_link: str, ip: str) -> None:
        """A namespace on the lab bridge: eth0 with `ip`, no other route."""
        state = self._require()
        _ip("netns", "add", netns)
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip(
            "-n", state.master_netns, "link", "add", host_link, "type", "veth",
            "peer", "eth0", "netns", netns,
        )  # fmt: skip
        _ip("-n", state.master_netns, "link", "set", host_link, "master", BRIDGE, "up")
        _ip("-n", netns, "addr", "add", f"{ip}/{LAB_NETWORK.prefixlen}", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")

    def _node_routing(self, node: NodeState) -> None:
        # Local clients of a ClusterIP need a route before kube-proxy's DNAT picks a pod.
        _ip("-n", node.netns, "route", "add", SERVICE_CIDR, "dev", "eth0")
        subprocess.run(
            ["nsenter", f"--net=/var/run/netns/{node.netns}", "sysctl", "-qw",
             "net.ipv4.ip_forward=1"],
            check=True,
        )  # fmt: skip

    def start_node(self, name: str) -> None:
        """Start (or restart) a node's containerd, kubelet and kube-proxy (with
        --proxy=pod, no kube-proxy: the DaemonSet's pod on the node comes back with
        its kubelet)."""
        self.stop_node(name)  # whatever still runs of it: never two of anything
        for component in self.components():
            self.start_component(name, component)

    def components(self) -> tuple[str, ...]:
        """The processes a node runs: COMPONENTS, but the proxy in pod mode."""
        if self._require().proxy_mode == "pod":
            return tuple(c for c in COMPONENTS if c != "proxy")
        return COMPONENTS

    def start(self, name: str) -> str:
        """`lab start NAME`: a node's processes, the master, a master (master-N) or an
        etcd member (etcd-N); returns what was started, for the user."""
        state = self._require()
        if state.masters and self._is_master(name):
            self.start_master(name)
            return f"{name}: started"
        if state.masters and self._is_etcd(name):
            self.start_etcd(name)
            return f"{name}: started"
        if name == "master" and not state.masters:
            self.start_master()
            return "master: started"
        self.start_node(name)
        return f"node {name}: started"

    def stop(self, name: str) -> str:
        """`lab stop NAME`: SIGTERM (then SIGKILL) a node's processes, the master, a
        master or an etcd member; returns what was stopped, for the user."""
        state = self._require()
        if state.masters and (self._is_master(name) or self._is_etcd(name)):
            master = self.master_of(name)
            proc = master.process if name == master.name else master.etcd
            if proc is not None:
                proc.stop()
            self._point_socket()
            self._save()
            return f"{name}: stopped"
        if name == "master" and not state.masters:
            if state.master is not None:
                state.master.stop()
            return "master: stopped"
        self.stop_node(name)
        return f"node {name}: kubelet, kube-proxy and containerd stopped"

    def start_component(self, name: str, component: str) -> None:
        """Start one of a node's processes ("containerd", "kubelet" or "proxy"), or
        the master (name "master"; with several masters master-N, or etcd member
        etcd-N), if it does not run: how the lab restarts what `kill` crashed, as
        systemd would."""
        state = self._require()
        if name == "master" or (state.masters and (self._is_master(name) or self._is_etcd(name))):
            self.start(name)
            return
        if component not in COMPONENTS:
            raise LabError(f'no component "{component}" (one of {", ".join(COMPONENTS)})')
        if component not in self.components():
            raise LabError(
                f"kube-proxy on {name} is a pod of DaemonSet kube-system/kube-proxy "
                "(lab up --proxy=pod), not a process of the lab"
            )
        node = self.node(name)
        running: Proc | None = getattr(node, component)
        if running is not None and running.alive():
            raise LabError(f"{component} on {name} already runs (PID {running.pid})")
        base = self.node_dir(name)
        base.mkdir(parents=True, exist_ok=True)
        starter = {
            "containerd": self._start_containerd,
            "kubelet": self._start_kubelet,
            "proxy": self._start_proxy,
        }[component]
        setattr(node, component, starter(node, base))
        self._save()

    def kill(self, name: str, component: str = "") -> int:
        """kill -9 one process: the master (name "master"; with several masters
        master-N or etcd member etcd-N) or one of a node's ("containerd", "kubelet",
        "proxy"); returns the PID killed. Nothing else is touched: a containerd's
        shims and pods keep running, as after a real crash."""
        state = self._require()
        several = bool(state.masters) and (self._is_master(name) or self._is_etcd(name))
        if several:
            master = self.master_of(name)
            proc = master.process if name == master.name else master.etcd
            what = name
        elif name == "master" and not state.masters:
            proc, what = state.master, "the master"
        else:
            if component not in COMPONENTS:
                raise LabError(f'no component "{component}" (one of {", ".join(COMPONENTS)})')
            if component not in self.components():
                raise LabError(
                    f"kube-proxy on {name} is a pod of DaemonSet kube-system/kube-proxy "
                    "(lab up --proxy=pod): delete the pod instead"
                )
            proc, what = getattr(self.node(name), component), f"{component} on {name}"
        if proc is None or not proc.alive():
            raise LabError(f"{what} does not run")
        proc.kill()
        if proc.alive():
            raise LabError(f"{what} (PID {proc.pid}) survived SIGKILL")
        if several:
            self._point_socket()
        return proc.pid

    def _start_containerd(self, node: NodeState, base: Path) -> Proc:
        socket = base / "containerd.sock"
        config = write_containerd_config(
            base / "containerd.toml",
            root=str(base / "root"),
            state=str(base / "state"),
            grpc_address=str(socket),
            cni_conf_dir=str(base / "net.d"),
            sandbox_image=PAUSE_IMAGE,
            registry_config_dir=str(base / "certs.d"),
        )
        if self._require().registry is not None:
            # docker.io pulls (image: busybox) go to the lab's registry: nothing has a
            # route off the machine, so the upstream is never reached.
            write_registry_mirror(base / "certs.d", "docker.io", f"http://{REGISTRY_ADDRESS}")
        containerd = ContainerdProcess(
            config,
            address=str(socket),
            netns=node.netns,
            log_path=self.logs / f"{node.name}-containerd.log",
        )
        try:
            containerd.start()
        except ContainerdError as exc:
            raise LabError(f"containerd on {node.name} did not start: {exc}") from exc
        assert containerd.pid is not None
        return Proc(containerd.pid, str(config))

    def _start_kubelet(self, node: NodeState, base: Path) -> Proc:
        name = node.name
        return self._spawn(
            node.netns,
            f"{name}-kubelet",
            self._python(
                "kubeling.kubelet.main",
                "--master", self.master_addresses(MASTER_PORT),
                "--node-name", name,
                *self._join_args(name, base / "kubelet-pki"),
                "--runtime-endpoint", f"unix://{base / 'containerd.sock'}",
                "--listen", "0.0.0.0:10250",
                "--node-ip", node.ip,
                "--cni-conf-dir", str(base / "net.d"),
                # Address leases per node: the lab's nodes share one filesystem.
                "--cni-ipam-dir", str(base / "ipam"),
                "--cluster-cidr", CLUSTER_CIDR,
                "--service-cidr", SERVICE_CIDR,
                "--sync-pod-routes",
                "--image-dir", str(self.sandbox_images),
                "--pod-log-dir", str(base / "pods"),
                # Each node's pod volumes in its own folder (down unmounts them).
                "--root-dir", str(base / "kubelet"),
                *self._cluster_dns_args(),
                *self._require().kubelet_args,
            ),
            # (The process renames itself, kubeling-kubelet: the marker is in its arguments.)
            f"--node-name {name} --join-address",
        )  # fmt: skip

    def _cluster_dns_args(self) -> list[str]:
        if not self._require().cluster_dns:
            return []  # pods resolve with the node's resolv.conf (dnsPolicy Default)
        return ["--cluster-dns", addons.CLUSTER_DNS, "--cluster-domain", addons.CLUSTER_DOMAIN]

    def _start_proxy(self, node: NodeState, base: Path) -> Proc:
        name = node.name
        return self._spawn(
            node.netns,
            f"{name}-proxy",
            self._python(
                "kubeling.proxy.main",
                "--master", self.master_addresses(MASTER_PORT),
                "--node-name", name,
                "--cluster-cidr", CLUSTER_CIDR,
                *self._join_args(name, base / "proxy-pki"),
                "--listen", f"0.0.0.0:10249,unix:{self.proxy_socket(name)}",
                *self._require().proxy_args,
            ),
            f"--node-name {name} --cluster-cidr",
        )  # fmt: skip

    def stop_node(self, name: str) -> None:
        """Node loss: stop the node's kubelet, kube-proxy and containerd (its pods'
        processes keep running, as on a machine that lost its agents)."""
        node = self.node(name)
        for proc in (node.kubelet, node.proxy, node.containerd):
            if proc is not None:
                proc.stop()
        self._save()

    def _wait_pod_cidrs(self, timeout: float = 120.0) -> None:
        from kubeling.v1 import core_pb2, meta_pb2

        state = self._require()
        deadline = time.monotonic() + timeout
        with self._admin_channel() as channel:
            list_nodes = channel.unary_unary(
                "/kubeling.v1.Nodes/List",
                request_serializer=meta_pb2.ListRequest.SerializeToString,
                response_deserializer=core_pb2.NodeList.FromString,
            )
            while True:
                with contextlib.suppress(grpc.RpcError):
                    found = {
                        n.metadata.name: n.spec.pod_cidr
                        for n in list_nodes(meta_pb2.ListRequest(), timeout=5).items
                    }
                    for node in state.nodes:
                        node.pod_cidr = found.get(node.name, "")
                    if all(node.pod_cidr for node in state.nodes):
                        return
                if time.monotonic() > deadline:
                    missing = [n.name for n in state.nodes if not n.pod_cidr]
                    raise LabError(f"nodes without a pod CIDR: {missing}; see {self.logs}")
                time.sleep(0.2)

    # -- status, exec, down ----------------------------------------------------------

    def status(self) -> list[tuple[str, str, str, str, str, str]]:
        """(node, netns, ip, pod CIDR, processes alive, log folder) per node, the
        master first."""
        state = self._require()

        def up(proc: Proc | None) -> str:
            return "up" if proc and proc.alive() else "DOWN"

        master = ("master", state.master_netns, f"{MASTER_IP}:{MASTER_PORT}", "", up(state.master))
        rows = [(*master, str(self.logs))]
        if state.masters:
            rows = [
                (m.name, m.netns, f"{m.ip}:{MASTER_PORT}", "", up(m.process), str(self.logs))
                for m in state.masters
            ]
            rows += [
                (m.etcd_name, m.netns, f"{m.ip}:{ETCD_CLIENT_PORT}", "", up(m.etcd), "")
                for m in state.masters
            ]
        for node in state.nodes:
            parts = []
            for label, proc in (
                ("containerd", node.containerd),
                ("kubelet", node.kubelet),
                ("proxy", node.proxy),
            ):
                if label in self.components():
                    parts.append(f"{label}:{'up' if proc and proc.alive() else 'DOWN'}")
            if state.proxy_mode == "pod":
                parts.append("proxy:pod")
            rows.append((node.name, node.netns, node.ip, node.pod_cidr, " ".join(parts), ""))
        if state.registry is not None:
            registry = ("registry", self.registry_netns, REGISTRY_ADDRESS, "", up(state.registry))
            rows.append((*registry, ""))
        rows += self._addon_rows()
        return rows

    def _addon_rows(self) -> list[tuple[str, str, str, str, str, str]]:
        """One row per add-on: where it serves, its pods ready (DOWN when not all)."""
        state = self._require()

        async def read() -> list[addons.AddonStatus | None]:
            async with self.client(timeout=3) as api:
                found: list[addons.AddonStatus | None] = []
                for addon in state.addons:
                    try:
                        found.append(await addons.addon_status(api, addon))
                    except grpc.aio.AioRpcError:
                        found.append(None)
                return found

        try:
            statuses = _run_async(read()) if state.addons else []
        except (OSError, grpc.aio.AioRpcError):
            statuses = [None] * len(state.addons)
        rows = []
        for addon, status in zip(state.addons, statuses, strict=True):
            where = f"{addons.CLUSTER_DNS}:53" if addon == addons.DNS else "every node"
            if status is None:
                text = "DOWN (no answer from the master)"
            else:
                text = f"{status.kind} {status.ready}/{status.want} ready"
                text += "" if status.ok else " DOWN"
            rows.append((f"add-on {addon}", addons.NAMESPACE, where, "", text, ""))
        return rows

    def exec_command(self, name: str, command: list[str]) -> list[str]:
        """The command line that runs `command` inside a node (or "master"; with
        several masters master-N or etcd-N, the master's namespace)."""
        state = self._require()
        if state.masters and (self._is_master(name) or self._is_etcd(name)):
            netns = self.master_of(name).netns
        elif name == "master" and not state.masters:
            netns = state.master_netns
        else:
            netns = self.node(name).netns
        return ["nsenter", f"--net=/var/run/netns/{netns}", "--", *command]

    def down(self, progress: Callable[[str], None] = print, keep_logs: bool = False) -> None:
        """Remove every process, pod, mount, namespace and file the lab made (but the
        logs, with `keep_logs`). Safe to run again after a partial failure."""
        state = self.state
        if state is None:
            if self.dir.exists() and not keep_logs:
                shutil.rmtree(self.dir, ignore_errors=True)
            return
        for node in state.nodes:
            progress(f"removing node {node.name}")
            self._remove_node(node)
        if state.master is not None:
            progress("stopping the master")
            state.master.stop()
        if state.masters:
            progress("stopping the masters, then etcd")
            # All at once (each takes a moment to drain), the masters before their store.
            _stop_all([m.process for m in state.masters])
            # Its data goes next: no graceful stop (a member whose peers are going
            # spends seconds trying to hand over its leadership).
            for master in state.masters:
                if master.etcd is not None:
                    master.etcd.kill()
        if state.registry is not None:
            progress("stopping the image registry")
            state.registry.stop()
        for master in state.masters:
            if _netns_exists(master.netns):
                subprocess.run(["ip", "netns", "delete", master.netns], capture_output=True)
        if _netns_exists(state.master_netns):
            subprocess.run(["ip", "netns", "delete", state.master_netns], capture_output=True)
        for point in mounts_under(str(self.dir)):
            subprocess.run(["umount", "-l", point], capture_output=True)
        if keep_logs:
            for item in self.dir.iterdir():
                if item != self.logs:
                    if item.is_dir():
                        shutil.rmtree(item, ignore_errors=True)
                    else:
                        item.unlink(missing_ok=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.state = None

    def _remove_node(self, node: NodeState) -> None:
        base = self.node_dir(node.name)
        socket = base / "containerd.sock"
        for proc in (node.kubelet, node.proxy):
            if proc is not None:
                proc.stop()
        if node.containerd is not None and node.containerd.alive():
            with contextlib.suppress(Exception):
                remove_all_sandboxes(str(socket))  # CNI DEL, clean pod teardown
            node.containerd.stop()
        remove_leftovers(str(socket), root=str(base / "root"), state=str(base / "state"))
        if _netns_exists(node.netns):
            # Deleting the namespace takes its links, bridge and nftables table along.
            subprocess.run(["ip", "netns", "delete", node.netns], capture_output=True)


@contextlib.contextmanager
def running_lab(directory: Path, options: LabOptions) -> Iterator[Lab]:
    """A lab for the duration of a block (tests): always taken down."""
    lab = Lab(directory)
    try:
        lab.up(options, progress=lambda _: None)
        yield lab
    finally:
        lab.down(progress=lambda _: None)
