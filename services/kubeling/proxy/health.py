"""HTTP on port 10256: /healthz and /livez with kube-proxy's semantics, and /metrics
(Prometheus text format); and the gRPC health of the proxy's API, which turns
NOT_SERVING for good once a supervised loop gave up."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

from aiohttp import web

from kubeling.common import httpserve, rpc
from kubeling.proxy.kubeproxy import KubeProxy

DEFAULT_PORT = 10256


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat() if seconds else ""


def _answer(proxy: KubeProxy, check_node: bool) -> web.Response:
    healthy = proxy.healthy()
    eligible = not proxy.node_deleting()
    body = {
        "lastUpdated": _stamp(proxy.state.last_sync_wall),
        "currentTime": _stamp(time.time()),
        "nodeEligible": eligible,
    }
    ok = healthy and (eligible or not check_node)
    return web.Response(
        status=200 if ok else 503, text=json.dumps(body), content_type="application/json"
    )


def make_app(proxy: KubeProxy) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        # /healthz also fails while the node is being deleted (load balancers drain it).
        return _answer(proxy, check_node=True)

    async def livez(request: web.Request) -> web.Response:
        return _answer(proxy, check_node=False)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    app.router.add_get("/metrics", httpserve.metrics_handler)
    return app


async def serve_health(proxy: KubeProxy, bind: str) -> web.AppRunner:
    """Serve on `bind` (HOST:PORT, :PORT or HOST); the caller cleans up the returned
    runner; its port is `httpserve.bound_port(runner)` (useful with port 0)."""
    return await httpserve.serve(make_app(proxy), bind, DEFAULT_PORT)


def follow_supervisor(proxy: KubeProxy, grpc_server: rpc.Server) -> None:
    """When one of the proxy's loops gives up, every gRPC service answers
    NOT_SERVING and stays so (HTTP follows `proxy.healthy()` by itself)."""
    pending: list[asyncio.Future[None]] = []

    def not_serving(failure: object) -> None:
        pending.append(asyncio.ensure_future(grpc_server.health.enter_graceful_shutdown()))

    proxy.supervisor.on_failure(not_serving)
