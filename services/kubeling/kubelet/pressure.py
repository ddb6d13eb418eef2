"""Node pressure: MemoryPressure, DiskPressure and PIDPressure from measurements.

As upstream's eviction manager (`pkg/kubelet/eviction`), the kubelet observes
signals and compares them with hard thresholds; a condition is True while one of
its signals is below its threshold. The thresholds are Kubernetes' defaults
(`DefaultEvictionHard`): memory.available<100Mi, nodefs.available<10%,
nodefs.inodesFree<5%, imagefs.available<15%, imagefs.inodesFree<5%. Upstream has no
default for pid.available (so PIDPressure never turns True unless configured);
kubeling uses pid.available<10%.

Signals, measured as upstream does on Linux:
- memory.available: MemAvailable of /proc/meminfo (upstream: capacity minus the
  root cgroup's working set; MemAvailable is the kernel's own estimate of the same);
- nodefs: statvfs of the kubelet's data (the pod log directory);
- imagefs: statvfs of the runtime's image filesystem (CRI ImageFsInfo), else nodefs;
- pid.available: min(kernel.pid_max, kernel.threads-max) minus the tasks in
  /proc/loadavg (upstream's pidlimit.Stats).

`measure` reads the machine; `pressure` is pure, so tests feed it signals.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MI = 1024 * 1024


@dataclass(frozen=True)
class FsStats:
    available: int  # bytes free to unprivileged users
    capacity: int  # bytes
    inodes_free: int
    inodes: int


@dataclass(frozen=True)
class Signals:
    memory_available: int  # bytes
    memory_capacity: int
    nodefs: FsStats
    imagefs: FsStats
    pid_available: int
    pid_max: int


@dataclass(frozen=True)
class Thresholds:
    """Hard eviction thresholds: bytes for memory, fractions of capacity otherwise."""

    memory_available: int = 100 * MI
    nodefs_available: float = 0.10
    nodefs_inodes_free: float = 0.05
    imagefs_available: float = 0.15
    imagefs_inodes_free: float = 0.05
    pid_available: float = 0.10


@dataclass(frozen=True)
class Pressure:
    """The signals (upstream's names) below their thresholds, per condition."""

    memory: tuple[str, ...] = ()
    disk: tuple[str, ...] = ()
    pid: tuple[str, ...] = ()


def _below(value: int, total: int, fraction: float) -> bool:
    # A filesystem that reports no inodes (some do, e.g. btrfs) has no inode signal.
    return total > 0 and value < total * fraction


def pressure(signals: Signals, thresholds: Thresholds | None = None) -> Pressure:
    t = thresholds or Thresholds()
    memory = ("memory.available",) if signals.memory_available < t.memory_available else ()
    disk: list[str] = []
    for name, fs, available, inodes in (
        ("nodefs", signals.nodefs, t.nodefs_available, t.nodefs_inodes_free),
        ("imagefs", signals.imagefs, t.imagefs_available, t.imagefs_inodes_free),
    ):
        if _below(fs.available, fs.capacity, available):
            disk.append(f"{name}.available")
        if _below(fs.inodes_free, fs.inodes, inodes):
            disk.append(f"{name}.inodesFree")
    pid: tuple[str, ...] = ()
    if _below(signals.pid_available, signals.pid_max, t.pid_available):
        pid = ("pid.available",)
    return Pressure(memory, tuple(disk), pid)


# -- measuring this machine -------------------------------------------------------


def _existing(path: Path) -> Path:
    """The path, or its nearest existing parent (a directory not made yet lives on
    the filesystem it will be made on)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def filesystem(path: Path) -> FsStats:
    st = os.statvfs(_existing(path))
    return FsStats(
        available=st.f_bavail * st.f_frsize,
        capacity=st.f_blocks * st.f_frsize,
        inodes_free=st.f_ffree,
        inodes=st.f_files,
    )


def _meminfo(proc: Path) -> tuple[int, int]:
    """(MemAvailable, MemTotal) in bytes."""
    values: dict[str, int] = {}
    for line in (proc / "meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("MemAvailable", "MemTotal"):
            values[name] = int(rest.split()[0]) * 1024
    return values["MemAvailable"], values["MemTotal"]


def _pids(proc: Path) -> tuple[int, int]:
    """(available, max) tasks: upstream's pidlimit.Stats."""
    limits = [int((proc / "sys/kernel" / name).read_text()) for name in ("pid_max", "threads-max")]
    most = min(limits)
    # "0.10 0.08 0.06 1/97 9188": running/total tasks (sysinfo(2) truncates).
    tasks = int((proc / "loadavg").read_text().split()[3].split("/")[1])
    return most - tasks, most


def measure(nodefs: Path, imagefs: Path | None = None, proc: Path = Path("/proc")) -> Signals:
    """This machine's signals (blocking file reads: call it off the event loop)."""
    memory_available, memory_capacity = _meminfo(proc)
    pid_available, pid_max = _pids(proc)
    node = filesystem(nodefs)
    return Signals(
        memory_available=memory_available,
        memory_capacity=memory_capacity,
        nodefs=node,
        imagefs=filesystem(imagefs) if imagefs is not None else node,
        pid_available=pid_available,
        pid_max=pid_max,
    )
