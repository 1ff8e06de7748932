"""gateway.adapters.http1: the pooled keep-alive HTTP/1.1 client, against real servers on
loopback.

``Origin`` is a raw asyncio server on 127.0.0.1 that parses each request (httptools) and
answers with exactly the bytes a test's script returns, so every framing (Content-Length,
chunked, read-until-close), every early close and every garbage answer is what the test
says. It records which connection each request arrived on, so keep-alive reuse and retries
are observed from the server's side. Nothing waits on a sleep: scripts hold answers on
events, and tests await the server's own events."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httptools
import pytest

from gateway.adapters import http1
from gateway.adapters.http1 import Http1Pool, HttpResponse, ResponseTooLargeError

T = TypeVar("T")


# --- a raw origin on loopback ---------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One request as the origin received it."""

    connection: int  # the origin's connection number, in accept order from 0
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    """What the origin does with a request: write ``data`` (may be empty), then close the
    connection if ``close``."""

    data: bytes = b""
    close: bool = False


Script = Callable[[Seen], Awaitable[Reply]]


class _Requests:
    """httptools' request parser: complete requests of one connection, in order."""

    def __init__(self, connection: int) -> None:
        self._connection = connection
        self._parser = httptools.HttpRequestParser(self)
        self.done: list[Seen] = []
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    def feed(self, data: bytes) -> list[Seen]:
        self._parser.feed_data(data)
        done, self.done = self.done, []
        return done

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", {}, []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.done.append(
            Seen(
                self._connection,
                self._parser.get_method().decode(),
                self._url.decode("latin-1"),
                self._headers,
                b"".join(self._body),
            )
        )


@dataclass
class Origin:
    script: Script
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    # One event per accepted connection, set when the origin's side of it has ended
    # (the client closed it, or the script did).
    ended: list[asyncio.Event] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(self.ended)

    def paths(self) -> list[tuple[int, str]]:
        return [(s.connection, s.path) for s in self.seen]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(self.ended)
        ended = asyncio.Event()
        self.ended.append(ended)
        requests = _Requests(number)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                for request in requests.feed(data):
                    self.seen.append(request)
                    reply = await self.script(request)
                    if reply.data:
                        writer.write(reply.data)
                        await writer.drain()
                    if reply.close:
                        return
        except (ConnectionError, httptools.HttpParserError):
            return
        except asyncio.CancelledError:
            # The test is over (asyncio.run cancels what is left): end quietly. A handler
            # task that ends cancelled makes Python 3.11's asyncio.streams log an error.
            return
        finally:
            writer.close()
            ended.set()


@asynccontextmanager
async def origin(script: Script) -> AsyncIterator[Origin]:
    server_side = Origin(script)
    server = await asyncio.start_server(server_side.serve, "127.0.0.1", 0)
    server_side.port = server.sockets[0].getsockname()[1]
    try:
        yield server_side
    finally:
        server.close()
        with suppress(Exception):
            await server.wait_closed()


@asynccontextmanager
async def pool_for(where: Origin | str) -> AsyncIterator[Http1Pool]:
    pool = Http1Pool(where.url if isinstance(where, Origin) else where)
    try:
        yield pool
    finally:
        pool.close()


def run(scenario: Coroutine[Any, Any, T], limit_s: float = 20.0) -> T:
    """Run a scenario on a fresh event loop; a hang fails the test instead of stalling it."""

    async def bounded() -> T:
        async with asyncio.timeout(limit_s):
            return await scenario

    return asyncio.run(bounded())


def response(
    status: int = 200,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    *,
    length: int | None = None,
    reason: str = "OK",
    version: str = "1.1",
) -> bytes:
    """An answer with a Content-Length (``length`` to lie about it) unless ``headers`` name a
    Transfer-Encoding or ask for ``length=-1`` (none)."""
    lines = [f"HTTP/{version} {status} {reason}"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    if length != -1:
        lines.append(f"Content-Length: {len(body) if length is None else length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def echo_path(request: Seen) -> Reply:
    """The request's path as the body: every answer is recognisably its own request's."""
    return Reply(response(200, request.path.encode(), [("Content-Type", "text/plain")]))


async def answer_with(request: Seen) -> Reply:
    return echo_path(request)


async def post(pool: Http1Pool, path: str, timeout_s: float = 5.0) -> HttpResponse:
    return await pool.request("POST", path, [], b"", timeout_s)


# --- framing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b'{"predictions": [1]}'),
        (404, b"no such thing"),
        (500, b"\x00\xff binary"),
        (200, b""),
    ],
)
def test_content_length_body_and_the_request_on_the_wire(status: int, body: bytes) -> None:
    async def script(request: Seen) -> Reply:
        return Reply(response(status, body, [("Content-Type", "application/json")]))

    async def scenario() -> None:
        async with origin(script) as server, pool_for(server) as pool:
            got = await pool.request(
                "POST",
                "/endpoints/m/invocations?x=1",
                [("content-type", "text/csv"), ("X-Custom", "a  b")],
                b"1,2,3\n",
                5.0,
            )
            assert got.status == status
            assert got.body == body
            assert got.headers == {
                "content-type": "application/json",
                "content-length": str(len(body)),
            }
            [seen] = server.seen
            assert seen.method == "POST"
            assert seen.path == "/endpoints/m/invocations?x=1"
            assert seen.headers == {
                "host": f"127.0.0.1:{server.port}",
                "content-type": "text/csv",
                "x-custom": "a  b",
                "content-length": "6",
            }
            assert seen.body == b"1,2,3\n"

    run(scenario())


def test_a_get_with_no_body_sends_content_length_zero() -> None:
    async def scenario() -> None:
        async with origin(answer_with) as server, pool_for(server) as pool:
            got = await pool.request("GET", "/healthz", [], b"", 5.0)
            assert got.body == b"/healthz"
            [seen] = server.seen
            assert (seen.method, seen.headers["content-length"], seen.body) == ("GET", "0", b"")

    run(scenario())


def test_no_content_answer_has_an_empty_body_and_keeps_the_connection() -> None:
    async def script(request: Seen) -> Reply:
        if request.path == "/first":
            return Reply(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")
        return echo_path(request)

    async def scenario() -> None:
        async with origin(script) as server, pool_for(server) as pool:
            first = await post(pool, "/first")
            assert (first.status, first.body, first.headers) == (204, b"", {"x-a": "1"})
            assert (await post(pool, "/second")).body == b"/second"
            assert server.paths() == [(0, "/first"), (0, "/second")]

    run(scenario())


def test_chunked_body_is_reassembled_and_the_connection_reused() -> None:
    chunks = [b"5\r\nhello\r\n", b"1;ext=1\r\n \r\n", b"5\r\nworld\r\n", b"0\r\n\r\n"]

    async def script(request: Seen) -> Reply:
        if request.path != "/chunked":
            return echo_path(request)
        head = response(200, headers=[("Transfer-Encoding", "chunked")], length=-1)
        return Reply(head + b"".join(chunks))

    async def scenario() -> None:
        async with origin(script) as server, pool_for(server) as pool:
            got = await post(pool, "/chunked")
            assert got.status == 200
            assert got.body == b"hello world"
            assert got.headers == {"transfer-encoding": "chunked"}
            assert (await post(pool, "/after")).body == b"/after"
            assert server.paths() == [(0, "/chunked"), (0, "/after")]

    run(scenario())


class _Transport(asyncio.Transport):
    """Enough of a transport for one ``_Connection``: records writes and closing."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        (response(200, b"0123456789", [("X-A", "1")]), b"0123456789"),
        (
            response(200, headers=[("Transfer-Encoding", "chunked")], length=-1)
            + b"3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\n\r\n",
            b"abcdefg",
        ),
    ],
    ids=["content-length", "chunked"],
)
def test_an_answer_arriving_one_byte_at_a_time_is_parsed_whole(answer: bytes, body: bytes) -> None:
    """TCP may split an answer anywhere: the parser carries its state across
    ``data_received`` calls (fed here one byte per call, which no socket guarantees)."""

    async def scenario() -> None:
        connection = http1._Connection()
        transport = _Transport()
        connection.connection_made(transport)
        waiter = connection.send(b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
        for i in range(len(answer)):
            assert not waiter.done()
            connection.data_received(answer[i : i + 1])
        got = await waiter
        assert (got.status, got.body) == (200, body)
        assert transport.written.startswith(b"POST / HTTP/1.1")
        assert connection.open and not transport.closed  # keep-alive: reusable

    run(scenario())


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: text/plain\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n",
    ],
    ids=["http/1.1-connection-close", "http/1.0"],
)
def test_read_until_close_body_then_a_fresh_connection(head: bytes) -> None:
    async def script(request: Seen) -> Reply:
        if request.path == "/eof":
            return Reply(head + b"the whole body, " + b"x" * 70_000 + b" end", close=True)
        return echo_path(request)

    async def scenario() -> None:
        async with origin(script) as server, pool_for(server) as pool:
            got = await post(pool, "/eof")
            assert got.status == 200
            assert got.body == b"the whole body, " + b"x" * 70_000 + b" end"
            assert got.headers["content-type"] == "text/plain"
            assert (await post(pool, "/next")).body == b"/next"
            assert server.paths() == [(0, "/eof"), (1, "/next")]

    run(scenario())


def test_repeated_headers_are_joined_and_names_lowercased() -> None:
    async def script(request: Seen) -> Reply:
        headers = [("Set-Cookie", "a=1"), ("X-Trace", "one"), ("set-cookie", "b=2")]
        return Reply(response(200, b"{}", [*headers, ("X-Amzn-ErrorType", "ModelError")]))

    async def scenario() -> None:
        async with origin(script) as server, pool_for(server) as pool:
            got = await post(pool, "/")
            assert got.headers == {
                "set-cookie": "a=1, b=2",
                "x-trace": "one",
                "x-amzn-errortype": "ModelError",
                "content-length": "2",
            }

    run(scenario())


# --- keep-alive and its failures ------------------------------------------------------------


def test_sequential_requests_share_one_connection() -> None:
    async def scenario() -> None:
        async with origin(answer_with) as server, pool_for(server) as pool:
            bodies = [(await post(pool, f"/r{i}")).body for i in range(6)]
            assert bodies == [f"/r{i}".encode() for i in range(6)]
            assert server.connections == 1
            assert server.paths() == [(0, f"/r{i}") for i in range(6)]

    run(scenario())


def test_origin_closing_after_an_answer_costs_nothing_to_the_next_request() -> None:
    """The origin closes an idle keep-alive connection (no ``Connection: close`` said):
    whether the pool has noticed before the next request or only when writing on it, the
    next request is answered, on a new connection."""

    async def script(request: Seen) -> Reply:
        return Reply(echo_path(request).data, close=True)

    async def scenario() -> None:
        async with origin(script) as server, pool_for(server) as pool:
            assert (await post(pool, "/one")).body == b"/one"
            await server.ended[0].wait()
            assert (await post(pool, "/two")).body == b"/two"
            assert server.paths() == [(0, "/one"), (1, "/two")]

    run(scenario())


def test_request_on_a_connection_the_origin_drops_is_retried_once_on_a_fresh_one() -> None:
    """The race the retry exists for: the request was written on an idle connection that
    the origin closes without answering (it reached an idle timeout as the request came)."""

    async def script(request: Seen) -> Reply:
        if request.connection == 0 and request.path == "/second":
            return Reply(close=True)
        return echo_path(request)

    async def scenario() -> None:
        async with origin(script) as server, pool_for(server) as pool:
            assert (await post(pool, "/first")).body == b"/first"
            assert (await post(pool, "/second")).body == b"/second"
            assert server.paths() == [(0, "/first"), (0, "/second"), (1, "/second")]
            assert (await post(pool, "/third")).body == b"/third"
            assert server.paths()[-1] == (1, "/third")

    run(scenario())


def test_the_retry_happens_once_only() -> None:
    async def script(request: Seen) -> Reply:
        if request.path == "/first":
            return echo_path(request)
        return Reply(close=True)  # every later request: dropped unanswered

    async def scenario() -> None:
        async with origin(script) as server, pool_for(server) as pool:
            await post(pool, "/first")
            with pytest.raises(ConnectionResetError):
                await post(pool, "/second")
            assert server.paths() == [(0, "/first"), (0, "/second"), (1, "/second")]

    run(scenario())


@pytest.mark.parametrize("reused", [False, True], ids=["fresh", "reused"])
@pytest.mark.parametrize(
    "partial",
    [
        response(200, b"0123456789", length=100),
        response(200, headers=[("Transfer-Encoding", "chunked")], length=-1) + b"5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",
    ],
    ids=["content-length", "chunked", "in-the-headers"],
)
def test_origin_closing_mid_response_is_a_connection_reset(partial: bytes, reused: bool) -> None:
    """Part of the answer arrived: the request reached the origin, so it is not retried."""

    async def script(request: Seen) -> Reply:
        if request.path == "/cut":
            return Reply(partial, close=True)
        return echo_path(request)

    async def scenario() -> None:
        async with origin(script) as server, pool_for(server) as pool:
            if reused:
                await post(pool, "/warm")
            with pytest.raises(ConnectionResetError):
                await post(pool, "/cut")
            assert [path for _, path in server.paths()].count("/cut") == 1
            assert (await post(pool, "/after")).body == b"/after"

    run(scenario())


@pytest.mark.parametrize(
    "partial",
    [
        response(200, b"0123456789", [("Connection", "close")], length=100),
        response(
            200, headers=[("Transfer-Encoding", "chunked"), ("Connection", "close")], length=-1
        )
        + b"5\r\nhello\r\n",
        response(200, b"0123456789", length=100, version="1.0"),
    ],
    ids=["connection-close-content-length", "connection-close-chunked", "http/1.0-content-length"],
)
def test_a_close_that_cuts_a_framed_body_short_is_an_error(partial: bytes) -> None:
    async def script(request: Seen) -> Reply:
        return Reply(partial, close=True)

    async def scenario() -> None:
        async with origin(script) as server, pool_for(server) as pool:
            with pytest.raises(ConnectionResetError):
                await post(pool, "/cut")

    run(scenario())


def test_timeout_raises_in_time_and_the_connection_is_never_reused() -> None:
    release = asyncio.Event()

    async def script(request: Seen) -> Reply:
        if request.path == "/slow":
            await release.wait()
            return Reply(response(200, b"late answer to /slow"))
        return echo_path(request)

    async def scenario() -> None:
        async with origin(script) as server, pool_for(server) as pool:
            await post(pool, "/warm")  # the connection that will time out is a reused one
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(TimeoutError):
                await post(pool, "/slow", timeout_s=0.5)
            elapsed = loop.time() - started
            assert 0.45 <= elapsed < 2.0
            # The origin answers late; the pool has closed that connection, which the
            # origin's side sees as the end of it.
            release.set()
            await server.ended[0].wait()
            got = await post(pool, "/next")
            assert got.body == b"/next"
            assert server.paths() == [(0, "/warm"), (0, "/slow"), (1, "/next")]

    run(scenario())


def test_a_cancelled_request_closes_its_connection() -> None:
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def script(request: Seen) -> Reply:
        if request.path == "/slow":
            arrived.set()
            await release.wait()
            return Reply(response(200, b"late"))
        return echo_path(request)

    async def scenario() -> None:
        async with origin(script) as server, pool_for(server) as pool:
            task = asyncio.create_task(post(pool, "/slow"))
            await arrived.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            release.set()
            await server.ended[0].wait()
            assert (await post(pool, "/next")).body == b"/next"
            assert server.paths() == [(0, "/slow"), (1, "/next")]

    run(scenario())


@contextmanager
def refusing_port() -> Iterator[int]:
    """A port bound on loopback but not listening: connecting is refused, and no other
    process can take the port meanwhile."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_connection_refused_is_an_oserror() -> None:
    async def scenario() -> None:
        with refusing_port() as port:
            async with pool_for(f"http://127.0.0.1:{port}") as pool:
                with pytest.raises(ConnectionRefusedError) as raised:
                    await post(pool, "/")
                assert isinstance(raised.value, OSError)

    run(scenario())


# --- hostile answers ------------------------------------------------------------------------


def too_large_answers() -> list[bytes]:
    big = b"x" * 5_000
    return [
        response(200, big),
        response(200, headers=[("Transfer-Encoding", "chunked")], length=-1)
        + b"".join(b"3e8\r\n" + big[:1000] + b"\r\n" for _ in range(5))
        + b"0\r\n\r\n",
        response(200, big, [("Connection", "close")], length=-1),
    ]


@pytest.mark.parametrize(
    "answer", too_large_answers(), ids=["content-length", "chunked", "until-close"]
)
def test_an_answer_over_the_size_limit_is_an_error_and_the_pool_goes_on(
    monkeypatch: pytest.MonkeyPatch, answer: bytes
) -> None:
    monkeypatch.setattr(http1, "MAX_RESPONSE_BYTES", 1_000)

    async def script(request: Seen) -> Reply:
        if request.path == "/big":
            return Reply(answer, close=b"close" in answer)
        if request.path == "/limit":
            return Reply(response(200, b"y" * 1_000))  # exactly the limit: fine
        return echo_path(request)

    async def scenario() -> None:
        async with origin(script) as server, pool_for(server) as pool:
            assert (await post(pool, "/limit")).body == b"y" * 1_000
            with pytest.raises((ResponseTooLargeError, httptools.HttpParserError)) as raised:
                await post(pool, "/big")
            chain = [raised.value, raised.value.__cause__, raised.value.__context__]
            assert any(isinstance(e, ResponseTooLargeError) for e in chain)
            assert (await post(pool, "/after")).body == b"/after"
            assert server.paths()[-1][1] == "/after"

    run(scenario())


def test_an_answer_over_the_size_limit_raises_response_too_large(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http1, "MAX_RESPONSE_BYTES", 1_000)

    async def script(request: Seen) -> Reply:
        return Reply(response(200, b"x" * 5_000))

    async def scenario() -> None:
        async with origin(script) as server, pool_for(server) as pool:
            with pytest.raises(ResponseTooLargeError):
                await post(pool, "/big")

    run(scenario())


@pytest.mark.parametrize(
    "garbage",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 200 OK\r\nthis is no header\r\n\r\n",
        b"HTTP/1.1 abc Broken\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["not-http", "bad-header-line", "bad-status", "bad-length", "bad-chunk-size"],
)
def test_garbage_is_a_parser_error_not_a_hang(garbage: bytes) -> None:
    """The origin writes garbage and then keeps the connection open: only the parser can
    end the wait before the (long) timeout."""

    async def script(request: Seen) -> Reply:
        if request.path != "/garbage":
            return echo_path(request)
        return Reply(garbage)  # and the connection stays open

    async def scenario() -> None:
        async with origin(script) as server, pool_for(server) as pool:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(httptools.HttpParserError):
                await post(pool, "/garbage", timeout_s=10.0)
            assert loop.time() - started < 5.0
            await server.ended[0].wait()  # the pool closed the connection
            assert (await post(pool, "/after")).body == b"/after"
            assert server.paths()[-1] == (1, "/after")

    run(scenario())


# --- the base URL ---------------------------------------------------------------------------


RUNTIME = "runtime.sagemaker.eu-west-1.amazonaws.com"


@pytest.mark.parametrize(
    ("url", "host", "port", "authority", "base_path", "tls"),
    [
        (f"https://{RUNTIME}", RUNTIME, 443, RUNTIME, "", True),
        ("https://example.com:443/", "example.com", 443, "example.com", "", True),
        ("https://example.com:8443/base/", "example.com", 8443, "example.com:8443", "/base", True),
        ("http://model:8080/v1/", "model", 8080, "model:8080", "/v1", False),
        ("http://model", "model", 80, "model", "", False),
        ("http://model:80", "model", 80, "model", "", False),
        ("http://127.0.0.1:9000", "127.0.0.1", 9000, "127.0.0.1:9000", "", False),
    ],
)
def test_base_url_gives_host_port_and_authority(
    url: str, host: str, port: int, authority: str, base_path: str, tls: bool
) -> None:
    pool = Http1Pool(url)
    assert (pool.host, pool.port, pool.authority, pool.base_path) == (
        host,
        port,
        authority,
        base_path,
    )
    assert (pool._ssl is not None) is tls


@pytest.mark.parametrize("url", ["ftp://example.com", "http://", "example.com:80", ""])
def test_a_base_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        Http1Pool(url)


# --- concurrency ----------------------------------------------------------------------------


def test_concurrent_requests_each_get_their_own_answer() -> None:
    """20 requests in flight at once: the origin holds every answer until all 20 have
    arrived, then answers them in the reverse order of arrival."""
    n = 20
    all_in = asyncio.Event()
    turns: dict[str, asyncio.Event] = {}
    order: list[str] = []

    async def script(request: Seen) -> Reply:
        rid = request.headers["x-request-id"]
        if request.path == "/again":
            return Reply(response(200, f"again {rid}".encode()))
        order.append(rid)
        turns[rid] = asyncio.Event()
        if len(order) == n:
            all_in.set()
        await all_in.wait()
        position = order.index(rid)
        if position < n - 1:
            await turns[order[position + 1]].wait()
        turns[rid].set()
        return Reply(response(200, f"answer {rid} {request.body.decode()}".encode()))

    async def scenario() -> None:
        async with origin(script) as server, pool_for(server) as pool:

            async def one(i: int) -> HttpResponse:
                return await pool.request(
                    "POST", "/", [("x-request-id", f"r{i}")], f"body-{i}".encode(), 10.0
                )

            answers = await asyncio.gather(*(one(i) for i in range(n)))
            assert [a.body for a in answers] == [f"answer r{i} body-{i}".encode() for i in range(n)]
            assert server.connections == n
            # Every connection went back to the pool: a second wave opens none.
            again = await asyncio.gather(
                *(
                    pool.request("POST", "/again", [("x-request-id", f"s{i}")], b"", 10.0)
                    for i in range(n)
                )
            )
            assert [a.body for a in again] == [f"again s{i}".encode() for i in range(n)]
            assert server.connections == n

    run(scenario())
