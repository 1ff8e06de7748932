"""Pooled keep-alive HTTP/1.1 to one origin, on asyncio and httptools (uvicorn's parser).

The container front end's hot path calls a model endpoint per request; a general client
(httpx, aiohttp) spends several times the gateway's whole budget per call on machinery this
path never uses. This one does exactly: write a request on an idle connection, parse the
answer, put the connection back. Content-Length, chunked and read-until-close bodies are
understood; TLS comes from asyncio."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class ResponseTooLargeError(Exception):
    """The origin answered more than MAX_RESPONSE_BYTES."""


@dataclass(slots=True)  # not frozen: built per request (gateway/values.py)
class HttpResponse:
    status: int
    headers: dict[str, str]  # lowercased names; repeated headers joined with ", "
    body: bytes


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.open = False
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self.received_any = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.open = True

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised; the size limit's own error is clearer.
            cause = exc.__context__
            self._fail(cause if isinstance(cause, ResponseTooLargeError) else exc)

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self._headers_done and not self._framed:
                # A body delimited by the end of the connection is complete now (one with a
                # length or chunks that the close cut short is not).
                self.on_message_complete()
            else:
                waiter.set_exception(ConnectionResetError("the origin closed the connection"))

    # httptools callbacks
    _headers_done = False
    _framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._framed = "content-length" in self._headers or "chunked" in self._headers.get(
            "transfer-encoding", ""
        )

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_RESPONSE_BYTES:
            raise ResponseTooLargeError(f"the response exceeds {MAX_RESPONSE_BYTES} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            waiter.set_result(HttpResponse(self._parser.get_status_code(), self._headers, body))
        if not self._parser.should_keep_alive() and self.transport is not None:
            self.open = False
            self.transport.close()

    # the pool's side
    def send(self, data: bytes) -> asyncio.Future[HttpResponse]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._headers = {}
        self._body = []
        self._size = 0
        self._headers_done = False
        self._framed = False
        self.received_any = False
        self.transport.write(data)
        return self._waiter

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[HttpResponse]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no answer in time"))


class Http1Pool:
    """Keep-alive connections to the origin of ``base_url`` (scheme://host[:port])."""

    def __init__(self, base_url: str, max_idle: int = 64, connect_timeout_s: float = 2.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        self.authority = self.host if default_port else f"{self.host}:{self.port}"
        self.base_path = parts.path.rstrip("/")
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._idle: list[_Connection] = []
        self._max_idle = max_idle
        self._connect_timeout = connect_timeout_s

    async def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout_s: float,
    ) -> HttpResponse:
        """One request. Raises TimeoutError past ``timeout_s`` (connect included), OSError
        when the origin cannot be reached or drops the connection."""
        head = [f"{method} {path} HTTP/1.1\r\nhost: {self.authority}\r\n"]
        head.extend(f"{name}: {value}\r\n" for name, value in headers)
        head.append(f"content-length: {len(body)}\r\n\r\n")
        data = "".join(head).encode("latin-1") + body
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            connection, reused = self._idle_connection(), True
            if connection is None:  # a new one: connecting is bounded by the deadline too
                async with asyncio.timeout_at(deadline):
                    connection, reused = await self._connect(), False
            waiter = connection.send(data)
            # A timer on the answer, cheaper than a timeout scope around it.
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                response = await waiter
            except ConnectionResetError:
                # An idle connection the origin closed meanwhile: the request never
                # reached it. Once more on a fresh one.
                if reused and not connection.received_any:
                    continue
                raise
            except BaseException:
                connection.close()  # an answer may still arrive: never reuse it
                raise
            finally:
                timer.cancel()
            self._checkin(connection)
            return response

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.open:
                return connection
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            _, connection = await loop.create_connection(
                _Connection,
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self._ssl else None,
            )
        return connection

    def _checkin(self, connection: _Connection) -> None:
        if connection.open and len(self._idle) < self._max_idle:
            self._idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
