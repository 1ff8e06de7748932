"""The endpoint invokers of the container front end's event loop: the same protocols and the
same answers as the blocking ones (``sagemaker``, ``container``, ``oip``), over pooled
keep-alive connections, with SageMaker runtime requests signed by a cached SigV4 key."""

from __future__ import annotations

import json
from urllib.parse import quote, urlsplit

import httptools

from gateway.adapters import container, oip
from gateway.adapters.http1 import Http1Pool, HttpResponse, ResponseTooLargeError
from gateway.adapters.sagemaker import translate_error
from gateway.adapters.sigv4 import SigV4Signer
from gateway.errors import BackendError, BackendTimeoutError, BackendUnavailableError
from gateway.models import EndpointTarget
from gateway.values import BackendReply


class _Pools:
    """One pool per origin; policies may name any number of model servers."""

    def __init__(self) -> None:
        self._pools: dict[str, Http1Pool] = {}
        self._urls: dict[str, tuple[Http1Pool, str]] = {}

    def for_url(self, url: str) -> tuple[Http1Pool, str]:
        """The pool of ``url``'s origin and the URL's base path."""
        known = self._urls.get(url)
        if known is not None:
            return known
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = Http1Pool(origin)
        if len(self._urls) > 10_000:
            self._urls.clear()
        known = self._urls[url] = (pool, parts.path.rstrip("/"))
        return known

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()


async def _call(
    pool: Http1Pool,
    name: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes,
    timeout_s: float,
) -> HttpResponse:
    try:
        return await pool.request("POST", path, headers, body, max(0.001, timeout_s))
    except TimeoutError as exc:
        raise BackendTimeoutError(f"'{name}' did not answer within {timeout_s:.2f} s.") from exc
    except OSError as exc:
        raise BackendUnavailableError(f"'{name}' is unreachable.", retry_after_s=5) from exc
    except ResponseTooLargeError as exc:
        raise BackendError(f"'{name}' answered more than the gateway accepts.") from exc
    except httptools.HttpParserError as exc:
        # Not HTTP: as the blocking clients say of a broken answer, the backend is away.
        raise BackendUnavailableError(
            f"'{name}' answered something that is not HTTP.", retry_after_s=5
        ) from exc


class AsyncSageMakerRuntimeInvoker:
    """``InvokeEndpoint`` on the wire (rest-json), as botocore would send and parse it."""

    def __init__(self, endpoint_url: str, signer: SigV4Signer) -> None:
        self._pool = Http1Pool(endpoint_url)
        self._signer = signer

    async def invoke(
        self, target: EndpointTarget, body: bytes, content_type: str, accept: str, timeout_s: float
    ) -> BackendReply:
        name = target.endpoint_name
        path = f"{self._pool.base_path}/endpoints/{quote(name, safe='')}/invocations"
        headers = self._signer.headers(
            "POST",
            self._pool.authority,
            path,
            {"content-type": content_type, "accept": accept},
            body,
        )
        response = await _call(self._pool, name, path, headers, body, timeout_s)
        if response.status >= 300:
            raise _runtime_error(name, response)
        cold = response.headers.get("x-infergw-cold-start-ms")  # the local emulator's
        return BackendReply(
            body=response.body,
            content_type=response.headers.get("content-type", "application/json"),
            variant=response.headers.get("x-amzn-invoked-production-variant"),
            cold_start_ms=float(cold) if cold else None,
        )

    def close(self) -> None:
        self._pool.close()


def _runtime_error(name: str, response: HttpResponse) -> Exception:
    try:
        doc = json.loads(response.body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        doc = {}
    # rest-json: the code in x-amzn-ErrorType (before any ':'), else in the body.
    code = response.headers.get("x-amzn-errortype", "").split(":")[0]
    code = code or str(doc.get("__type") or doc.get("code") or "").split("#")[-1]
    if not code:
        if response.status in (429, 503):
            return BackendUnavailableError(f"Endpoint '{name}' is at capacity.", retry_after_s=1)
        return BackendError(f"Endpoint '{name}' failed with HTTP {response.status}.")
    message = str(doc.get("message") or doc.get("Message") or "")
    original = doc.get("OriginalMessage")
    return translate_error(
        name,
        code,
        message,
        doc.get("OriginalStatusCode"),
        original if isinstance(original, str) else None,
    )


class AsyncContainerInvoker:
    def __init__(self) -> None:
        self._pools = _Pools()

    async def invoke(
        self, target: EndpointTarget, body: bytes, content_type: str, accept: str, timeout_s: float
    ) -> BackendReply:
        pool, base = self._pools.for_url(str(target.url))
        headers = [("content-type", content_type), ("accept", accept)]
        name = target.endpoint_name
        response = await _call(pool, name, f"{base}/invocations", headers, body, timeout_s)
        return container.reply_or_raise(
            name, response.status, response.headers.get("content-type"), response.body
        )

    def close(self) -> None:
        self._pools.close()


class AsyncOipInvoker:
    def __init__(self) -> None:
        self._pools = _Pools()

    async def invoke(
        self, target: EndpointTarget, body: bytes, content_type: str, accept: str, timeout_s: float
    ) -> BackendReply:
        pool, base = self._pools.for_url(str(target.url))
        name, path = oip.infer_path(target)
        request = oip.infer_request(body, content_type)
        headers = [("content-type", "application/json")]
        response = await _call(pool, name, base + path, headers, request, timeout_s)
        return oip.reply_or_raise(name, response.status, response.body)

    def close(self) -> None:
        self._pools.close()
