"""HTTP on port 10256: /healthz and /livez with kube-proxy's semantics, and /metrics
(Prometheus text format)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

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

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    app.router.add_get("/metrics", metrics)
    return app


async def serve_health(proxy: KubeProxy, host: str, port: int) -> web.AppRunner:
    """Start the HTTP endpoint; the caller cleans up the returned runner. The bound
    port is `runner.addresses[0][1]` (useful with port 0)."""
    runner = web.AppRunner(make_app(proxy), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
