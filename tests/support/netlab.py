"""Network namespaces for traffic tests: a node with a bridge of pods and an outside
host, all made by the test and removed by it. Nothing has a route off the machine:
the node's default route leads to the outside namespace, which has no other link.

    outside (192.168.77.2) --- ext0 (192.168.77.1) [node] br0 (10.244.0.1) --- pods
                                                                    10.244.0.11, .12, ...
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.processes import stop_process

ECHO = str(Path(__file__).with_name("echo.py"))
NODE_IP = "192.168.77.1"
OUTSIDE_IP = "192.168.77.2"
POD_CIDR = "10.244.0.0/24"
GATEWAY = "10.244.0.1"


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def can_build() -> str | None:
    """Why a lab cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "nft", "conntrack"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            return f"{tool} is not installed (deploy/containerd/install-deps.sh)"
    return None


@dataclass
class Lab:
    pods: int = 3
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def node(self) -> str:
        return f"kpn-{self.tag}"

    @property
    def outside(self) -> str:
        return f"kpo-{self.tag}"

    def pod(self, index: int) -> str:
        return f"kpp{index}-{self.tag}"

    @staticmethod
    def pod_ip(index: int) -> str:
        return f"10.244.0.{10 + index}"

    def _netns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def build(self) -> Lab:
        node = self.node
        self._netns(node)
        _run("ip", "-n", node, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", node, "addr", "add", f"{GATEWAY}/24", "dev", "br0")
        _run("ip", "-n", node, "link", "set", "br0", "up")
        for index in range(1, self.pods + 1):
            pod = self.pod(index)
            self._netns(pod)
            port = f"p{index}"
            _run(
                "ip", "-n", node, "link", "add", port, "type", "veth", "peer", "eth0", "netns", pod
            )
            _run("ip", "-n", node, "link", "set", port, "master", "br0", "up")
            # Hairpin: with br_netfilter, a pod's packet DNATed back to itself is bridged
            # out of the port it came in on (the CNI bridge plugin's hairpinMode).
            _run("ip", "netns", "exec", node, "bridge", "link", "set", "dev", port, "hairpin", "on")
            _run("ip", "-n", pod, "addr", "add", f"{self.pod_ip(index)}/24", "dev", "eth0")
            _run("ip", "-n", pod, "link", "set", "eth0", "up")
            _run("ip", "-n", pod, "route", "add", "default", "via", GATEWAY)
        out = self.outside
        self._netns(out)
        _run("ip", "-n", node, "link", "add", "ext0", "type", "veth", "peer", "eth0", "netns", out)
        _run("ip", "-n", node, "addr", "add", f"{NODE_IP}/24", "dev", "ext0")
        _run("ip", "-n", node, "link", "set", "ext0", "up")
        _run("ip", "-n", out, "addr", "add", f"{OUTSIDE_IP}/24", "dev", "eth0")
        _run("ip", "-n", out, "link", "set", "eth0", "up")
        _run("ip", "-n", out, "route", "add", "default", "via", NODE_IP)
        # Local clients of a ClusterIP need some route before DNAT picks the pod.
        _run("ip", "-n", node, "route", "add", "default", "via", OUTSIDE_IP)
        _run("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        return self

    def start(self, netns: str, *command: str, log: Path | None = None) -> subprocess.Popen[bytes]:
        out = log.open("ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.processes.append(proc)
        return proc

    def serve_echo(self) -> None:
        """An echo server in every pod, answering with the pod's name, on port 8080."""
        for index in range(1, self.pods + 1):
            self.start(self.pod(index), sys.executable, ECHO, "serve", f"pod{index}", "8080")

    @staticmethod
    def _echo_client(netns: str, mode: str, host: str, port: int, amount: float) -> list[str]:
        """The command line of an echo client (tests/support/echo.py) in `netns`."""
        return [
            "ip", "netns", "exec", netns,
            sys.executable, ECHO, mode, host, str(port), str(amount),
        ]  # fmt: skip

    def client(self, netns: str, mode: str, host: str, port: int, amount: float) -> dict:  # type: ignore[type-arg]
        done = subprocess.run(
            self._echo_client(netns, mode, host, port, amount),
            check=True,
            capture_output=True,
            timeout=120,
        )
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    def client_background(
        self, netns: str, mode: str, host: str, port: int, amount: float
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            self._echo_client(netns, mode, host, port, amount), stdout=subprocess.PIPE
        )
        self.processes.append(proc)
        return proc

    def destroy(self) -> None:
        """Stop what was started (by PID) and delete the namespaces, which takes their
        links, bridge and nftables tables with them."""
        for proc in reversed(self.processes):
            stop_process(proc)
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        self.namespaces.clear()
