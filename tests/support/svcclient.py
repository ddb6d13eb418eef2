"""A Service client for chaos tests, run inside a lab node's network namespace:

    python svcclient.py HOST PORT INTERVAL

One new TCP connection and one HTTP/1.0 GET per request, every INTERVAL seconds,
until SIGTERM. One JSON line per request on stdout, flushed at once:

    {"t0": 12.5, "t1": 12.51, "dst": "10.244.1.7", "pod": "web-abc12"}  # an answer
    {"t0": 13.0, "t1": 15.0, "dst": "10.244.2.3", "error": "timeout"}  # a failure

t0/t1 are CLOCK_MONOTONIC (time.monotonic() is the same clock in every process of
the machine), so they compare with the times a chaos driver records. `dst` is
where the node's kube-proxy sent the connection: the DNAT target in conntrack's
NEW event for it ("" when there was none, e.g. a REJECT for a Service without
endpoints; for an answer, "" when the event came late). An answer names its pod
by the body (the pod's hostname).
Standard library only: the namespace runs the project's interpreter, nothing else.
"""

from __future__ import annotations

import ctypes
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict

PR_SET_PDEATHSIG = 1
_EVENT = re.compile(r"sport=(\d+) .*\] src=(\S+)")


def _error(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    return type(exc).__name__


def _die_with_parent() -> None:
    # conntrack -E never ends by itself: it must not outlive a client killed with -9.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class DnatWatch:
    """Where the kernel sent each connection to HOST:PORT (its DNAT target), from
    conntrack's NEW events. (A connection refused with a RST leaves no entry to list
    afterwards: the event is the only trace.)"""

    def __init__(self, host: str, port: int) -> None:
        self.targets: OrderedDict[int, str] = OrderedDict()  # source port -> target
        self.changed = threading.Condition()
        self.proc = subprocess.Popen(
            ["conntrack", "-E", "-e", "NEW", "-p", "tcp", "--orig-dst", host,
             "--orig-port-dst", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            found = _EVENT.search(line)
            if found is None:
                continue
            with self.changed:
                self.targets[int(found.group(1))] = found.group(2)
                while len(self.targets) > 10_000:
                    self.targets.popitem(last=False)
                self.changed.notify_all()

    def target(self, local_port: int, wait: float) -> str:
        with self.changed:
            self.changed.wait_for(lambda: local_port in self.targets, timeout=wait)
            return self.targets.pop(local_port, "")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)


def request(host: str, port: int, timeout: float, watch: DnatWatch) -> dict[str, object]:
    t0 = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind(("", 0))  # the source port is known before connect: it names the event
    local_port = sock.getsockname()[1]
    reply: dict[str, object] = {}
    try:
        sock.connect((host, port))
        sock.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b"\r\n")[0].split()
        if len(status) >= 2 and status[1] == b"200":
            reply = {"pod": body.decode(errors="replace").strip()}
        else:
            reply = {"error": "bad-reply"}
    except OSError as exc:
        reply = {"error": _error(exc)}
    finally:
        sock.close()
    t1 = time.monotonic()
    # A REJECT (no endpoints) makes no DNAT entry: "" after a short wait.
    dst = watch.target(local_port, wait=1.0 if "error" in reply else 0.0)
    return {"t0": t0, "t1": t1, "dst": dst, **reply}


def main(argv: list[str]) -> None:
    host, port, interval = argv[0], int(argv[1]), float(argv[2])
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    watch = DnatWatch(host, port)
    time.sleep(0.5)  # conntrack subscribed before the first connection
    try:
        while running:
            print(json.dumps(request(host, port, 2.0, watch)), flush=True)
            time.sleep(interval)
    finally:
        watch.close()


if __name__ == "__main__":
    main(sys.argv[1:])
