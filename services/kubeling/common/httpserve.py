"""The HTTP side every kubeling process serves: /metrics (Prometheus text) and
/healthz, /livez (200 or 503 from the process's own checks).

    runner = await serve_http("0.0.0.0:10257", healthz=lambda: not supervisor.failed.is_set())

Ports, as Kubernetes' own: master 10257 (kube-controller-manager's), kubelet 10248
(its healthz port; metrics on it too), kube-proxy 10256 (kube-proxy/health.py adds
kube-proxy's own JSON answers on the same routes).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

Check = Callable[[], bool]


async def metrics_handler(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def _check_handler(check: Check) -> Callable[[web.Request], object]:
    async def handle(request: web.Request) -> web.Response:
        ok = check()
        return web.Response(status=200 if ok else 503, text="ok" if ok else "unhealthy")

    return handle


def make_app(healthz: Check, livez: Check | None = None) -> web.Application:
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", _check_handler(healthz))  # type: ignore[arg-type]
    app.router.add_get("/livez", _check_handler(livez or healthz))  # type: ignore[arg-type]
    return app


def split_bind(value: str, default_port: int) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` or `HOST` into (host, port); the host defaults to 0.0.0.0."""
    host, sep, port = value.rpartition(":")
    if not sep:
        return value or "0.0.0.0", default_port
    return (host.strip("[]") or "0.0.0.0"), int(port or default_port)


async def serve(app: web.Application, bind: str, default_port: int) -> web.AppRunner:
    """Start `app` on `bind`; the caller cleans up the returned runner. The bound port
    is `bound_port(runner)` (useful with port 0)."""
    host, port = split_bind(bind, default_port)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def serve_http(
    bind: str, default_port: int, healthz: Check, livez: Check | None = None
) -> web.AppRunner:
    return await serve(make_app(healthz, livez), bind, default_port)


def bound_port(runner: web.AppRunner) -> int:
    return int(runner.addresses[0][1])
