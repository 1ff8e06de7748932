"""gateway.adapters.http_server: uvicorn's protocol sending a response in one write. The
transport wrapper joins the writes of one loop tick; a real uvicorn server with it answers
plain, streamed, chunked and keep-alive requests exactly as without it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from gateway.adapters.http_server import OneWriteHttpToolsProtocol, _OneWritePerTick


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"


def test_writes_of_one_tick_go_out_as_one() -> None:
    async def scenario() -> RecordingTransport:
        transport = RecordingTransport()
        wrapped = _OneWritePerTick(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        wrapped.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        wrapped.write(b"ok")
        assert transport.writes == []  # not before the tick ends
        assert wrapped.get_write_buffer_size() == 40
        await asyncio.sleep(0)
        assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
        wrapped.write(b"next")
        await asyncio.sleep(0)
        assert wrapped.get_extra_info("peername") == "extra:peername"  # the rest: forwarded
        return transport

    transport = asyncio.run(scenario())
    assert transport.writes[1:] == [b"next"]


def test_close_sends_what_was_written_first() -> None:
    async def scenario() -> RecordingTransport:
        transport = RecordingTransport()
        wrapped = _OneWritePerTick(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        wrapped.write(b"last words")
        wrapped.close()
        await asyncio.sleep(0)  # the scheduled flush finds nothing left, and writes nothing
        return transport

    transport = asyncio.run(scenario())
    assert transport.writes == [b"last words"] and transport.closed


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":  # no content-length: uvicorn chunks it
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.001)  # parts in different ticks
        await send({"type": "http.response.body", "body": b""})
        return
    answer = b"echo:" + body
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=OneWriteHttpToolsProtocol, log_level="warning"
    )
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not instance.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)


def test_a_real_server_answers_as_without_it(server: str) -> None:
    with httpx.Client(base_url=server) as client:
        for i in range(20):  # one keep-alive connection
            reply = client.post("/echo", content=f"request {i}".encode())
            assert (reply.status_code, reply.text) == (201, f"echo:request {i}")
            assert reply.headers["content-type"] == "text/plain"
        streamed = client.get("/stream")
        assert streamed.text == "one,two,three"
        assert streamed.headers["transfer-encoding"] == "chunked"
        assert client.head("/echo").status_code == 201
        assert client.post("/echo", content=b"after head").text == "echo:after head"
