"""uvicorn's httptools protocol, sending each response in one write.

uvicorn writes a response's status line and headers, then its body, as two
``transport.write`` calls: two TCP segments on a keep-alive connection, so the client
wakes up twice and the server makes two send calls, per response - on a small answer the
largest share of a request's cost. Here the writes made within one event-loop tick are
joined and go out together at the end of that tick."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _OneWritePerTick:
    """A transport whose writes in one tick of the loop are sent as one."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        if not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(p) for p in self._pending)

    def close(self) -> None:
        self._flush()  # what was written before close still goes out
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """Pass as ``uvicorn.run(..., http=OneWriteHttpToolsProtocol)``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        coalescing = _OneWritePerTick(transport, self.loop)  # type: ignore[arg-type]
        super().connection_made(coalescing)  # type: ignore[arg-type]


def serve(app: Any, host: str, port: int) -> None:
    """Run ``app`` as this project's HTTP servers run: uvloop, one-write responses, no
    access log, no proxy-headers middleware (callers reach the server directly) and no
    Server header."""
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http=OneWriteHttpToolsProtocol,
        proxy_headers=False,
        server_header=False,
    )
