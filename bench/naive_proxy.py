"""The naive Python proxy the issue measures the gateway against, for bench/gateway.py: what a
team writes in an afternoon - uvicorn with its defaults, a Starlette route, one API-key check
and an httpx.AsyncClient forwarding the body to one origin. Measured side by side with the
gateway in the same run, so that "7x the naive proxy" is a ratio of this machine, not a
figure from another.

    NAIVE_PROXY_KEY=secret .venv/bin/python bench/naive_proxy.py PORT ORIGIN_URL
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

FORWARDED = ("content-type", "accept")


def make_app(origin: str, key: str) -> Starlette:
    client: list[httpx.AsyncClient] = []

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        # One pooled client for the process, as the httpx docs recommend.
        async with httpx.AsyncClient(base_url=origin, timeout=5.0) as http:
            client.append(http)
            yield

    async def ping(_: Request) -> Response:
        return Response(status_code=200)

    async def forward(request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {key}":
            return JSONResponse({"detail": "unauthorized"}, status_code=401)
        headers = {name: request.headers[name] for name in FORWARDED if name in request.headers}
        reply = await client[0].post(
            request.url.path, content=await request.body(), headers=headers
        )
        return Response(
            reply.content,
            status_code=reply.status_code,
            media_type=reply.headers.get("content-type"),
        )

    routes = [Route("/ping", ping), Route("/{path:path}", forward, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan)


if __name__ == "__main__":
    app = make_app(sys.argv[2], os.environ["NAIVE_PROXY_KEY"])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
