"""The few pieces of raw ASGI the hot path needs, producing what Starlette would send."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Receive, Scope, Send


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body; ``None`` when the client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (``name`` in lower case), as Starlette reads it."""
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def render_json(document: dict[str, Any]) -> bytes:
    """As Starlette's ``JSONResponse`` renders."""
    return json.dumps(
        document, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


async def respond(send: Send, status: int, media_type: bytes, body: bytes) -> None:
    """A complete response, with the headers Starlette's ``Response`` sets, in its order."""
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", media_type)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
