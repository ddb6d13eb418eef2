"""Would several API front-end processes on one port help on this machine?

    python bench/frontends.py [--calls 4000] [--work-us 0,300] [--processes 1,2]

Issue 16 asks whether the master should serve its API from several processes
sharing the port (`grpc.so_reuseport`, forked before any gRPC object exists) in
front of one store. Before building that, this measures the most it could give:
a grpc.aio unary server that answers each call after `work` microseconds of
Python work on its event loop (0: a bare echo, the gRPC floor; ~300: what a
master spends on a create besides gRPC), served by 1 or 2 processes on one port,
called by 8 Python client channels (one call in flight each) from this process,
all on loopback. It prints calls/s and the CPU each side spends per call.

On a 2-core machine the clients need most of a core: a second server process can
only help if the first one's event loop, not the CPUs, is the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import sys
import time
from multiprocessing import get_context
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CLIENTS = 8


def serve(port: int, work_us: int, ready: EventType) -> None:
    """One server process: grpc.aio on `port` with SO_REUSEPORT."""

    async def main() -> None:
        spin = work_us / 1e6

        async def echo(request: bytes, context: object) -> bytes:
            if spin:
                until = time.perf_counter() + spin
                while time.perf_counter() < until:
                    pass
            return request

        handler = grpc.method_handlers_generic_handler(
            "bench.Frontend", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def call_rate(port: int, calls: int) -> float:
    # One channel per client; distinct channel args keep them from sharing a
    # subchannel, so the kernel spreads their connections over the processes.
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("bench.client", i)])
        for i in range(CLIENTS)
    ]
    payload = b"x" * 300
    try:
        stubs = [channel.unary_unary("/bench.Frontend/Echo") for channel in channels]

        async def run(stub: grpc.aio.UnaryUnaryMultiCallable, count: int) -> None:
            for _ in range(count):
                await stub(payload)

        await asyncio.gather(*(run(stub, 50) for stub in stubs))  # connect, warm up
        start = time.perf_counter()
        await asyncio.gather(*(run(stub, calls // CLIENTS) for stub in stubs))
        return (calls // CLIENTS * CLIENTS) / (time.perf_counter() - start)
    finally:
        for channel in channels:
            await channel.close()


def measure(processes: int, work_us: int, calls: int) -> tuple[float, float, float]:
    """calls/s, server CPU µs per call, client CPU µs per call."""
    context = get_context("spawn")
    port = free_port()
    servers = []
    try:
        for _ in range(processes):
            ready = context.Event()
            process = context.Process(target=serve, args=(port, work_us, ready), daemon=True)
            process.start()
            servers.append(process)
            if not ready.wait(30):
                raise RuntimeError("a server process did not start")
        assert all(p.pid is not None for p in servers)
        pids = [p.pid for p in servers if p.pid is not None]
        server_before = sum(cpu_seconds(pid) for pid in pids)
        client_before = resource.getrusage(resource.RUSAGE_SELF)
        rate = asyncio.run(call_rate(port, calls))
        client_after = resource.getrusage(resource.RUSAGE_SELF)
        server_cpu = sum(cpu_seconds(pid) for pid in pids) - server_before
        client_cpu = (client_after.ru_utime + client_after.ru_stime) - (
            client_before.ru_utime + client_before.ru_stime
        )
        total = calls + 50 * CLIENTS
        return rate, server_cpu / total * 1e6, client_cpu / total * 1e6
    finally:
        for process in servers:
            process.kill()
            process.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--work-us", default="0,300", help="comma list: µs of work per call")
    parser.add_argument("--processes", default="1,2", help="comma list of server processes")
    args = parser.parse_args()
    works = [int(w) for w in args.work_us.split(",")]
    counts = [int(p) for p in args.processes.split(",")]
    load_before = os.getloadavg()[0]
    table = Table(title=f"grpc.aio unary calls, {CLIENTS} Python client channels, one port")
    for column in ("work per call", "server processes", "calls/s", "server CPU/call",
                   "client CPU/call"):  # fmt: skip
        table.add_column(column, justify="right")
    for work in works:
        for count in counts:
            rate, server_us, client_us = measure(count, work, args.calls)
            cells = (f"{rate:,.0f}", f"{server_us:.0f} µs", f"{client_us:.0f} µs")
            table.add_row(f"{work} µs", str(count), *cells)
    console = Console()
    console.print(table)
    console.print(
        f"{os.cpu_count()} CPUs; load average (1 min) before {load_before:.2f}, after "
        f"{os.getloadavg()[0]:.2f}. Goal of issue 16: ≥ 3,000 creates/s with 8 clients."
    )


if __name__ == "__main__":
    main()
