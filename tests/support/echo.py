"""A tiny server and client for traffic tests inside network namespaces.

    python echo.py serve NAME PORT           # answers every TCP connection and UDP
                                             # datagram on PORT with NAME
    python echo.py connect HOST PORT COUNT   # COUNT new TCP connections; prints JSON
    python echo.py loop HOST PORT SECONDS    # a new TCP connection every 10 ms
    python echo.py udp HOST PORT SECONDS     # one UDP socket, a datagram every 100 ms

Clients print one JSON object: the answers (server names) and errors by kind.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections import Counter


def serve(name: str, port: int) -> None:
    reply = name.encode() + b"\n"
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))

    def answer_udp() -> None:
        while True:
            _, peer = udp.recvfrom(2048)
            udp.sendto(reply, peer)

    threading.Thread(target=answer_udp, daemon=True).start()
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", port))
    tcp.listen(512)
    print("serving", flush=True)
    while True:
        conn, _ = tcp.accept()
        with conn:
            conn.sendall(reply)


def _error(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    return type(exc).__name__


def _one(host: str, port: int, timeout: float) -> str:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
        return data.decode().strip() or "empty"


def connect(host: str, port: int, count: int, interval: float = 0.0) -> dict[str, object]:
    answers: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    slowest = 0.0
    for _ in range(count):
        start = time.monotonic()
        try:
            answers[_one(host, port, 2.0)] += 1
        except OSError as exc:
            errors[_error(exc)] += 1
        slowest = max(slowest, time.monotonic() - start)
        if interval:
            time.sleep(interval)
    return {"answers": dict(answers), "errors": dict(errors), "slowest": slowest}


def loop(host: str, port: int, seconds: float) -> dict[str, object]:
    answers: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            answers[_one(host, port, 1.0)] += 1
        except OSError as exc:
            errors[_error(exc)] += 1
        time.sleep(0.01)
    return {"answers": dict(answers), "errors": dict(errors)}


def udp(host: str, port: int, seconds: float) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.5)
    replies: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sock.sendto(b"hi", (host, port))
        try:
            replies.append(sock.recv(2048).decode().strip())
        except OSError as exc:
            replies.append("error:" + _error(exc))
        time.sleep(0.1)
    return {"replies": replies}


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "serve":
        serve(argv[1], int(argv[2]))
        return
    host, port, amount = argv[1], int(argv[2]), argv[3]
    if mode == "connect":
        result = connect(host, port, int(amount))
    elif mode == "loop":
        result = loop(host, port, float(amount))
    else:
        result = udp(host, port, float(amount))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
