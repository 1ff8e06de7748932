"""The floor of a Python proxy hop, for bench/gateway.py: uvicorn (served as the gateway is)
and the gateway's pooled HTTP/1.1 client forwarding each POST to one origin, with nothing
else - no auth, no limits, no routing, no metrics. What the gateway spends above this is the
cost of its own work per request.

    .venv/bin/python bench/python_hop.py PORT ORIGIN_URL
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# The project root first: bench/ on sys.path would shadow the `gateway` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.adapters.http1 import Http1Pool
from gateway.adapters.http_server import serve

FORWARDED = ("content-type", "accept")


def make_app(origin: str) -> Any:
    pool: list[Http1Pool] = []  # made on the server's event loop, by the first request

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/ping":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        if not pool:
            pool.append(Http1Pool(origin))
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = [
            (name.decode(), value.decode())
            for name, value in scope["headers"]
            if name.decode().lower() in FORWARDED
        ]
        reply = await pool[0].request("POST", scope["path"], headers, b"".join(chunks), 5.0)
        answer = [
            (b"content-type", reply.headers.get("content-type", "").encode()),
            (b"content-length", str(len(reply.body)).encode()),
        ]
        await send({"type": "http.response.start", "status": reply.status, "headers": answer})
        await send({"type": "http.response.body", "body": reply.body})

    return app


if __name__ == "__main__":
    serve(make_app(sys.argv[2]), "127.0.0.1", int(sys.argv[1]))
