"""The logs of many pods at once (`kubeling logs deploy/NAME`, `-l SELECTOR`).

Every selected pod's containers (or the one -c names) are read concurrently and
their lines printed as they come, each prefixed `[pod/NAME/CONTAINER] ` (kubectl's
--prefix), whole lines only so two streams never interleave within a line.

With --follow a pod watch keeps the set current: a pod that appears (a rollout's
new ReplicaSet) or a container that starts again (a new container ID) gets its
stream, one whose container stopped ends by itself. At most --max-log-requests
streams run at once; beyond that, as kubectl, the command refuses at the start
and later arrivals wait for a free slot.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from kubeling.cli.context import Context
from kubeling.cli.errors import CliError
from kubeling.client import Client
from kubeling.client.pods import pod_logs
from kubeling.v1 import core_pb2

__all__ = ["LogOptions", "show_selected"]


@dataclass
class LogOptions:
    container: str = ""
    follow: bool = False
    tail_lines: int | None = None
    since_seconds: int | None = None
    timestamps: bool = False
    previous: bool = False
    max_requests: int = 5


# A stream: (pod, container, container ID) — a restarted container is a new one.
Key = tuple[str, str, str]


def _streams(pod: core_pb2.Pod, container: str) -> list[Key]:
    """The containers of `pod` that have a log to read now."""
    names = [container] if container else [c.name for c in pod.spec.containers]
    found: list[Key] = []
    for status in pod.status.container_statuses:
        if status.name not in names or not status.container_id:
            continue
        if status.state.HasField("running") or status.state.HasField("terminated"):
            found.append((pod.metadata.name, status.name, status.container_id))
    return found


class _Printer:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def lines(self, prefix: str, text: str) -> None:
        out = "".join(f"{prefix}{line}\n" for line in text.splitlines())
        self.ctx.stdout.write(out)
        self.ctx.stdout.flush()


async def show_selected(
    api: Client, namespace: str, selector: str, options: LogOptions, ctx: Context
) -> int:
    listed = await api.pods.list(namespace, label_selector=selector)
    pods = listed.items
    initial = [key for pod in pods for key in _streams(pod, options.container)]
    if options.follow and len(initial) > options.max_requests:
        raise CliError(
            f"error: you are attempting to follow {len(initial)} log streams, but maximum "
            f"allowed concurrency is {options.max_requests}, use --max-log-requests to "
            "increase the limit"
        )
    printer = _Printer(ctx)
    slots = asyncio.Semaphore(max(1, options.max_requests))
    failures: list[str] = []

    async def stream(key: Key, follow: bool, since: int | None, tail: int | None) -> None:
        pod, container, _ = key
        prefix = f"[pod/{pod}/{container}] "
        async with slots:
            chunks = pod_logs(
                api, pod, namespace=namespace, container=container, follow=follow,
                tail_lines=tail, since_seconds=since, timestamps=options.timestamps,
                previous=options.previous,
            )  # fmt: skip
            try:
                async for text in chunks:
                    printer.lines(prefix, text)
            except grpc.aio.AioRpcError as exc:
                # A pod deleted under us is no error; anything else is reported.
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    failures.append(f"{prefix}{exc.details()}")
            finally:
                await chunks.aclose()

    if not options.follow:
        await asyncio.gather(
            *(stream(k, False, options.since_seconds, options.tail_lines) for k in initial)
        )
        for failure in failures:
            ctx.err(f"error: {failure}")
        return 1 if failures else 0

    tasks: dict[Key, asyncio.Task[None]] = {}

    def start(key: Key, since: int | None, tail: int | None) -> None:
        if key not in tasks:
            tasks[key] = asyncio.create_task(stream(key, True, since, tail))

    for key in initial:
        start(key, options.since_seconds, options.tail_lines)
    try:
        await _watch_pods(api, namespace, selector, options, start, listed.resource_version)
    finally:
        for task in tasks.values():
            task.cancel()
        for task in tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return 0


async def _watch_pods(
    api: Client,
    namespace: str,
    selector: str,
    options: LogOptions,
    start: Callable[[Key, int | None, int | None], None],
    version: str,
) -> None:
    """Start a stream for every container that gets a log, until cancelled."""
    while True:
        try:
            async for event in api.pods.watch(namespace, selector, resource_version=version):
                version = event.resource_version or version
                if event.type in ("ADDED", "MODIFIED"):
                    # A container that appears after we started: its whole log.
                    for key in _streams(event.object, options.container):
                        start(key, None, None)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.OUT_OF_RANGE:
                raise
            version = ""
        await asyncio.sleep(0.2)
