"""No user-supplied URL is ever fetched: URLs pointing at a canary HTTP server on loopback
go into every place a client controls - bodies of sync calls, job options and job inputs
a worker reads, headers, a token naming its own key URL - and the canary is never called,
even after the worker has finished the jobs."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from infergw.local.stack import Connection

ROW = [0.0] * 64


class Canary(ThreadingHTTPServer):
    def __init__(self) -> None:
        self.hits: list[str] = []
        canary = self

        class Handler(BaseHTTPRequestHandler):
            def _hit(self) -> None:
                canary.hits.append(f"{self.command} {self.path}")
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_PUT = do_HEAD = _hit

            def log_message(self, *_: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture()
def canary() -> Iterator[tuple[Canary, str]]:
    server = Canary()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _unsigned_token(url: str) -> str:
    def part(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    header = {"alg": "RS256", "kid": "k1", "jku": f"{url}/jwks", "x5u": f"{url}/cert"}
    return f"{part(header)}.{part({'sub': 'x', 'iss': url})}.c2ln"


def test_no_url_a_client_sends_is_ever_fetched(
    http: httpx.Client, conn: Connection, canary: tuple[Canary, str]
) -> None:
    server, url = canary
    assert httpx.get(f"{url}/alive").status_code == 200  # the canary does see a fetch
    assert server.hits == ["GET /alive"]
    server.hits.clear()
    invoke = "/v1/models/digits/invocations"
    sync_bodies = [
        {"inputs": f"{url}/inputs"},
        {"inputs": [ROW], "url": f"{url}/body", "input_location": f"{url}/loc"},
        {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "BYTES", "data": [url]}]},
        {"instances": [{"url": url}]},
    ]
    for body in sync_bodies:
        assert http.post(invoke, json=body).status_code < 500
    headers = {
        "X-Forwarded-Host": url[7:],
        "Forwarded": f"host={url[7:]}",
        "Referer": url,
        "Location": url,
        "X-Callback-Url": url,
        "Prefer": f"respond-async; callback={url}",
        "X-Amzn-SageMaker-Custom-Attributes": f"url={url}",
    }
    assert http.post(invoke, json={"inputs": [ROW]}, headers=headers).status_code < 500

    # Job options naming URLs, and jobs whose inputs are URLs: the worker reads only S3.
    created = http.post(
        "/v1/models/digits/jobs",
        json={
            "content_type": "application/json",
            "inference_id": url[:64],
            "input_location": f"{url}/in",
            "output_location": f"{url}/out",
            "callback_url": url,
        },
    )
    assert created.status_code < 500
    jobs = []
    for body, content_type in (
        (json.dumps({"inputs": f"{url}/rows"}), "application/json"),
        (f"{url}/a\n{url}/b\n", "application/x-ndjson"),
        (f"{url},1,2\n", "text/csv"),
    ):
        response = http.post(
            invoke,
            content=body,
            headers={"Content-Type": content_type, "Prefer": "respond-async"},
        )
        assert response.status_code in (202, 400, 415, 422), response.text
        if response.status_code == 202:
            jobs.append(response.json()["job_id"])
    assert jobs, "no job reached a worker: the sweep proves nothing about workers"

    # A token that names where to fetch its key.
    response = httpx.post(
        f"{conn.gateway_url}{invoke}",
        json={"inputs": [ROW]},
        headers={"Authorization": f"Bearer {_unsigned_token(url)}"},
    )
    assert response.status_code == 401

    deadline = time.monotonic() + 60
    for job_id in jobs:
        while (status := http.get(f"/v1/jobs/{job_id}").json())["status"] not in (
            "COMPLETED",
            "FAILED",
        ):
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert status["status"] == "FAILED" and status["failure_reason"], status
    assert server.hits == []
