"""containerd for a kubeling node: its configuration file and a process helper.

Several containerd instances can run side by side on one machine (the multi-node lab
runs one per node network namespace) because each gets its own root, state, socket,
runc root and CNI configuration, and pod network namespaces are kept under its own
state folder.

Tear-down order (verified on these machines):

1. stop and remove every pod sandbox through CRI (StopPodSandbox, RemovePodSandbox);
2. stop containerd (SIGTERM to its own PID, never by process name);
3. only if 1. did not happen: :func:`remove_leftovers` force-deletes the runc
   containers of *this* instance, kills its shims (found by its socket path on their
   command line) and lazily unmounts what remains under its root and state folders.

Killing containerd first leaves shims and pod processes running (a killed shim
does not take its container with it) and rootfs/shm/netns mounts under its state
folder; the folder cannot be removed until they are unmounted.

Start a node's containerd inside a node network namespace with
``nsenter --net=/var/run/netns/NAME`` (what :class:`ContainerdProcess` does), not
``ip netns exec``: the latter remounts /sys, which hides the cgroup mounts, and runc
then fails with "no cgroup mount found". Create all node namespaces (``ip netns
add``) before starting any containerd that uses /run/netns.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc

# Plugins a kubeling node never uses; not loading them keeps start-up quiet and fast.
# (io.containerd.runtime.v1.linux cannot go: 1.6's tasks service, and so CRI, need it.)
DISABLED_PLUGINS = (
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
)

CRI = 'plugins."io.containerd.grpc.v1.cri"'


def _toml_str(value: str) -> str:
    """A TOML basic string (stdlib tomllib only reads TOML)."""
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: str | bool | int | Sequence[str]) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_str(value)
    return "[" + ", ".join(_toml_str(v) for v in value) + "]"


def render_containerd_config(
    *,
    root: str,
    state: str,
    grpc_address: str,
    cni_conf_dir: str,
    cni_bin_dir: str = "/usr/lib/cni",
    sandbox_image: str,
    registry_config_dir: str | None = None,
    runc_root: str | None = None,
    snapshotter: str = "overlayfs",
    log_level: str = "info",
) -> str:
    """The text of a containerd 1.6 (config version 2) configuration; see
    :func:`write_containerd_config`."""
    tables: list[tuple[str, dict[str, str | bool | int | Sequence[str]]]] = [
        (
            "",
            {
                "version": 2,
                "root": root,
                "state": state,
                # containerd must not touch its own OOM score: no CAP_SYS_RESOURCE here.
                "oom_score": 0,
                "disabled_plugins": list(DISABLED_PLUGINS),
                # Fail at start, not at the first pod, when CRI cannot load.
                "required_plugins": ["io.containerd.grpc.v1.cri"],
            },
        ),
        ("grpc", {"address": grpc_address}),
        ("ttrpc", {"address": grpc_address + ".ttrpc"}),
        ("debug", {"level": log_level}),
        # The default /opt/containerd is shared by every instance.
        ('plugins."io.containerd.internal.v1.opt"', {"path": f"{root}/opt"}),
        (
            CRI,
            {
                "sandbox_image": sandbox_image,
                # The pause container's oom_score_adj of -998 is refused without
                # CAP_SYS_RESOURCE; runc then dies with "can't get final child's PID".
                "restrict_oom_score_adj": True,
                # Pod netns mounts live under this instance's state folder rather than
                # /run/netns: no collision with other instances, and immune to
                # `ip netns add` re-mounting /run/netns over existing pod namespaces.
                "netns_mounts_under_state_dir": True,
                "disable_tcp_service": True,
                # Exec/attach/port-forward streaming on loopback, any free port.
                "stream_server_address": "127.0.0.1",
                "stream_server_port": "0",
                "disable_apparmor": True,
                "enable_selinux": False,
                "systemd_cgroup": False,
            },
        ),
        (f"{CRI}.cni", {"bin_dir": cni_bin_dir, "conf_dir": cni_conf_dir, "max_conf_num": 1}),
        (
            f"{CRI}.containerd",
            {
                "snapshotter": snapshotter,
                "default_runtime_name": "runc",
                "discard_unpacked_layers": False,
            },
        ),
        (f"{CRI}.containerd.runtimes.runc", {"runtime_type": "io.containerd.runc.v2"}),
        (
            f"{CRI}.containerd.runtimes.runc.options",
            {
                # cgroupfs driver: the hierarchy is v1 and there is no systemd.
                "SystemdCgroup": False,
                # runc keeps container state here; per instance so their IDs never mix.
                "Root": runc_root or f"{state}/runc",
            },
        ),
    ]
    if registry_config_dir is not None:
        # hosts.toml per registry host, e.g. 127.0.0.1:5000/hosts.toml for plain HTTP.
        tables.append((f"{CRI}.registry", {"config_path": registry_config_dir}))

    lines = ["# Written by kubeling.node.containerd; containerd 1.6, config version 2."]
    for name, values in tables:
        if name:
            lines += ["", f"[{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def write_containerd_config(
    path: Path | str,
    *,
    root: str,
    state: str,
    grpc_address: str,
    cni_conf_dir: str,
    cni_bin_dir: str = "/usr/lib/cni",
    sandbox_image: str,
    registry_config_dir: str | None = None,
    runc_root: str | None = None,
    snapshotter: str = "overlayfs",
    log_level: str = "info",
) -> Path:
    """Write a containerd config for one kubeling node and return its path.

    `root`/`state`/`grpc_address` and `runc_root` (default ``STATE/runc``) are
    private to this instance. `sandbox_image` must already be imported: nothing can
    be pulled from the internet. `registry_config_dir`, when given, is CRI's registry
    ``config_path`` (a folder of ``HOST[:PORT]/hosts.toml`` files).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        render_containerd_config(
            root=root,
            state=state,
            grpc_address=grpc_address,
            cni_conf_dir=cni_conf_dir,
            cni_bin_dir=cni_bin_dir,
            sandbox_image=sandbox_image,
            registry_config_dir=registry_config_dir,
            runc_root=runc_root,
            snapshotter=snapshotter,
            log_level=log_level,
        )
    )
    return path


class ContainerdError(RuntimeError):
    """containerd failed to start or answer."""


def netns_path(netns: str) -> str:
    """A netns name from `ip netns add` -> its bind-mount path; paths pass through."""
    return netns if "/" in netns else f"/var/run/netns/{netns}"


class ContainerdProcess:
    """One containerd process with a given config, optionally in a network namespace.

    ``start()`` returns once ``ctr version`` answers on the socket; ``stop()`` signals
    only the PID this object started. Use as a context manager to always stop it.
    Stopping containerd does not stop pods: remove sandboxes through CRI first (see the
    module docstring for the order).
    """

    def __init__(
        self,
        config: Path | str,
        *,
        address: str,
        netns: str | None = None,
        log_path: Path | str | None = None,
        containerd: str = "containerd",
        ctr: str = "ctr",
    ) -> None:
        self.config = Path(config)
        self.address = address
        self.netns = netns
        self.log_path = Path(log_path) if log_path is not None else None
        self.containerd = containerd
        self.ctr = ctr
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        cmd = [self.containerd, "--config", str(self.config)]
        if self.netns is not None:
            # nsenter execs containerd (no --fork), so our PID is containerd's own.
            cmd = ["nsenter", f"--net={netns_path(self.netns)}", "--", *cmd]
        return cmd

    def start(self, timeout: float = 30.0) -> None:
        if self.running():
            raise ContainerdError("containerd is already running")
        log = open(self.log_path, "ab") if self.log_path is not None else None  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log if log is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
                # Own session: a Ctrl-C in the caller's terminal must not kill it
                # before the pods are torn down.
                start_new_session=True,
            )
        finally:
            if log is not None:
                log.close()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def answers(self) -> bool:
        """True when `ctr version` gets an answer over the socket."""
        try:
            result = subprocess.run(
                [self.ctr, "--address", self.address, "--timeout", "2s", "version"],
                capture_output=True,
                timeout=5,
                check=False,
            )
        except (subprocess.TimeoutExpired, FileNotFoundError):
            return False
        return result.returncode == 0

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise ContainerdError(
                    f"containerd exited with {self._proc.returncode}" + self._log_tail()
                )
            if Path(self.address).exists() and self.answers():
                return
            if time.monotonic() > deadline:
                raise ContainerdError(
                    f"containerd did not answer on {self.address} in {timeout}s" + self._log_tail()
                )
            time.sleep(0.1)

    def _log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "\n" + "\n".join(text)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM our containerd, SIGKILL after `timeout`; returns its exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        return proc.returncode

    def __enter__(self) -> ContainerdProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class Leftovers:
    deleted_containers: tuple[str, ...]
    killed_shims: tuple[int, ...]
    unmounted: tuple[str, ...]


def shim_pids(address: str) -> list[int]:
    """PIDs of containerd shims started by the containerd listening on `address`.

    Shims keep ``-address ADDRESS`` on their command line, and each instance has its
    own socket path, so this never matches another instance's shims.
    """
    pids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not os.path.basename(argv[0]).startswith(b"containerd-shim"):
            continue
        args = [a.decode(errors="replace") for a in argv]
        if any(a == "-address" and b == address for a, b in itertools.pairwise(args)):
            pids.append(int(entry.name))
    return sorted(pids)


def _alive(pid: int) -> bool:
    # A killed shim re-parented to a PID 1 that does not reap stays a zombie: dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _mountinfo_unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, ch)
    return field


def mounts_under(*folders: str) -> list[str]:
    """Mount points at or below any of `folders`, deepest first."""
    roots = [os.path.realpath(f).rstrip("/") for f in folders]
    found: list[str] = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = _mountinfo_unescape(line.split()[4])
            if any(point == r or point.startswith(r + "/") for r in roots):
                found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def runc_containers(runc_root: str) -> list[tuple[str, str]]:
    """(namespace root, container id) pairs runc still has state for under `runc_root`
    (containerd keeps one runc root per containerd namespace below it)."""
    found: list[tuple[str, str]] = []
    base = Path(runc_root)
    if not base.is_dir():
        return found
    for ns_root in sorted(p for p in base.iterdir() if p.is_dir()):
        found += [(str(ns_root), c.name) for c in sorted(ns_root.iterdir()) if c.is_dir()]
    return found


def remove_all_sandboxes(address: str, timeout: float = 60.0) -> None:
    """Stop and remove every pod sandbox through CRI (containers, CNI DEL, mounts):
    the clean first step of tearing a node down, before containerd stops."""
    from cri_api.v1 import api_pb2 as cri
    from cri_api.v1 import api_pb2_grpc as cri_grpc

    with grpc.insecure_channel(f"unix://{address}") as channel:
        runtime = cri_grpc.RuntimeServiceStub(channel)  # type: ignore[no-untyped-call]
        for sandbox in runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items:
            runtime.StopPodSandbox(
                cri.StopPodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=timeout
            )
            runtime.RemovePodSandbox(
                cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=timeout
            )


def remove_leftovers(
    address: str,
    *,
    root: str,
    state: str,
    runc_root: str | None = None,
    kill_timeout: float = 5.0,
) -> Leftovers:
    """Last-resort cleanup once containerd has stopped without its pods being removed.

    1. ``runc delete --force`` every container in this instance's runc root: a
       killed shim does not take its container with it (the pause process would
       live on, holding the pod's netns and cgroup);
    2. SIGKILL this instance's shims, found by PID through their ``-address``;
    3. lazily unmount everything below `root` and `state` (rootfs, shm, pod netns),
       so the folders can be deleted.

    CNI DEL never ran for such pods: their host-local leases stay in the IPAM data
    folder and libcni's result cache (/var/lib/cni/results) keeps their entries.
    """
    deleted: list[str] = []
    for ns_root, container in runc_containers(runc_root or f"{state}/runc"):
        result = subprocess.run(
            ["runc", "--root", ns_root, "delete", "--force", container],
            capture_output=True,
            check=False,
            timeout=30,
        )
        if result.returncode == 0:
            deleted.append(container)
    pids = shim_pids(address)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + kill_timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    unmounted: list[str] = []
    for point in mounts_under(root, state):
        result = subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        if result.returncode == 0:
            unmounted.append(point)
    return Leftovers(tuple(deleted), tuple(pids), tuple(unmounted))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kubeling.node.containerd config --out /etc/containerd/config.toml`:
    the containerd config of a worker node installed by hand (deploy/README.md)."""
    import argparse

    from kubeling.node.images import PAUSE_IMAGE

    parser = argparse.ArgumentParser(prog="python -m kubeling.node.containerd")
    sub = parser.add_subparsers(dest="command", required=True)
    config = sub.add_parser("config", help="write containerd's config for a kubeling node")
    config.add_argument("--out", type=Path, default=Path("/etc/containerd/config.toml"))
    config.add_argument("--root", default="/var/lib/containerd")
    config.add_argument("--state", default="/run/containerd")
    config.add_argument("--address", default="/run/containerd/containerd.sock")
    config.add_argument("--cni-conf-dir", default="/etc/kubeling/net.d")
    args = parser.parse_args(argv)
    path = write_containerd_config(
        args.out,
        root=args.root,
        state=args.state,
        grpc_address=args.address,
        cni_conf_dir=args.cni_conf_dir,
        sandbox_image=PAUSE_IMAGE,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def write_registry_mirror(
    config_dir: Path | str,
    registry: str,
    mirror: str,
    *,
    server: str | None = None,
) -> Path:
    """Write CONFIG_DIR/REGISTRY/hosts.toml so pulls of `registry` images (docker.io)
    go to `mirror` (http://10.99.0.1:5000) first; `server` (default: Docker Hub's
    for docker.io, else https://REGISTRY) stays the upstream, as containerd's own
    examples do. A plain-http mirror needs no skip_verify."""
    if server is None:
        server = (
            "https://registry-1.docker.io" if registry == "docker.io" else f"https://{registry}"
        )
    path = Path(config_dir) / registry / "hosts.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Written by kubeling.node.containerd: a registry mirror.\n"
        f"server = {_toml_value(server)}\n"
        "\n"
        f"[host.{_toml_value(mirror)}]\n"
        'capabilities = ["pull", "resolve"]\n'
    )
    return path
