"""A small Python client for the gateway's HTTP API."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEFAULT_CONNECTION_FILE = Path(".infergw/local.json")


class ProblemError(Exception):
    """The gateway answered with an RFC 9457 problem document."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}")

    @property
    def type(self) -> str:
        return str(self.problem.get("type", ""))


@dataclass(frozen=True)
class InvocationResult:
    status: int
    body: Any
    route: str
    variant: str
    headers: httpx.Headers

    @property
    def predictions(self) -> list[dict[str, Any]]:
        return list(self.body.get("predictions", [])) if isinstance(self.body, dict) else []


class Client:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout_s,
            transport=transport,
        )

    @classmethod
    def from_connection_file(cls, path: Path | None = None, **kwargs: Any) -> Client:
        """Connection details written by ``infergw up`` (or ``$INFERGW_CONNECTION``)."""
        path = path or Path(os.environ.get("INFERGW_CONNECTION", DEFAULT_CONNECTION_FILE))
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: start the local stack with 'make up' or pass --url/--key"
            )
        doc = json.loads(path.read_text())
        return cls(doc["gateway_url"], doc["api_key"], **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def invoke(
        self,
        model: str,
        data: Any = None,
        *,
        body: bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> InvocationResult:
        """Invoke ``model`` with ``data`` (JSON-encoded) or raw ``body`` bytes."""
        content = body if body is not None else json.dumps(data).encode()
        response = self._http.post(
            f"/v1/models/{model}/invocations",
            content=content,
            headers={"Content-Type": content_type, **(headers or {})},
        )
        parsed = _parse(response)
        return InvocationResult(
            status=response.status_code,
            body=parsed,
            route=response.headers.get("x-inference-route", ""),
            variant=response.headers.get("x-model-variant", ""),
            headers=response.headers,
        )

    def invoke_auto(
        self,
        model: str,
        body: bytes,
        *,
        content_type: str = "application/json",
        wait: bool = True,
        timeout_s: float = 600.0,
    ) -> InvocationResult | dict[str, Any]:
        """Sync or async by payload size, as the gateway decides: bodies above the model's
        sync limit go through a presigned upload; the job's result is fetched when done."""
        summary = self.model(model)
        if len(body) <= int(summary["sync_max_bytes"]) or "async" not in summary["backends"]:
            return self.invoke(model, body=body, content_type=content_type)
        job = self.submit_job(model, body=body, content_type=content_type)
        return self.wait(job["job_id"], timeout_s=timeout_s) if wait else job

    def submit_job(
        self,
        model: str,
        *,
        body: bytes | None = None,
        path: Path | None = None,
        content_type: str = "application/x-ndjson",
        accept: str = "application/x-ndjson",
        inference_id: str | None = None,
        idempotency_key: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Create a job and upload its input straight to S3 (the gateway never sees it)."""
        options: dict[str, Any] = {"content_type": content_type, "accept": accept}
        if inference_id:
            options["inference_id"] = inference_id
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        ticket: dict[str, Any] = _parse(
            self._http.post(f"/v1/models/{model}/jobs", json=options, headers=headers)
        )
        form = ticket["upload"]
        content: Any = body if body is not None else _ProgressFile(Path(str(path)), progress)
        try:
            response = httpx.post(
                form["url"],
                data=form["fields"],
                files={"file": ("input", content)},
                timeout=None,
            )
        finally:
            if hasattr(content, "close"):
                content.close()
        if response.status_code >= 300:
            raise ProblemError(
                response.status_code, {"title": "Upload refused", "detail": response.text[:500]}
            )
        return ticket

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = _parse(self._http.get(f"/v1/jobs/{job_id}"))
        return result

    def jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = _parse(self._http.get("/v1/jobs", params={"limit": limit}))
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = _parse(self._http.delete(f"/v1/jobs/{job_id}"))
        return result

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float = 600.0,
        poll_s: float = 0.25,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job ends; raises JobFailedError unless it COMPLETED."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if on_update:
                on_update(job)
            if job["status"] in ("COMPLETED", "FAILED", "CANCELLED", "EXPIRED"):
                if job["status"] != "COMPLETED":
                    raise JobFailedError(job)
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s:.0f} s")
            time.sleep(poll_s)  # polling the job's status, with a deadline

    def download(self, job: dict[str, Any], destination: Path) -> int:
        """Stream a completed job's output to ``destination``; returns its size."""
        size = 0
        with (
            httpx.stream("GET", job["output_url"], timeout=None) as response,
            destination.open("wb") as out,
        ):
            response.raise_for_status()
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
                size += len(chunk)
        return size

    def models(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = _parse(self._http.get("/v1/models"))
        return result

    def model(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = _parse(self._http.get(f"/v1/models/{name}"))
        return result

    def usage(self, tenant: str | None = None, since: str | None = None) -> list[dict[str, Any]]:
        params = {"since": since} if since else {}
        if tenant:
            result: list[dict[str, Any]] = _parse(
                self._http.get("/admin/usage", params={"tenant": tenant, **params})
            )
        else:
            result = _parse(self._http.get("/v1/usage", params=params))
        return result

    # -- administration (admin scope) -------------------------------------------------------
    def policies(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = _parse(self._http.get("/admin/policies"))
        return result

    def policy(self, model: str) -> dict[str, Any] | None:
        """The stored policy, or None when there is none."""
        response = self._http.get(f"/admin/policies/{model}")
        if response.status_code == 404:
            return None
        result: dict[str, Any] = _parse(response)
        return result

    def put_policy(self, model: str, document: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = _parse(self._http.put(f"/admin/policies/{model}", json=document))
        return result

    def delete_policy(self, model: str) -> None:
        _parse(self._http.delete(f"/admin/policies/{model}"))

    def create_key(
        self,
        tenant: str,
        scopes: list[str],
        tier: str = "standard",
        allowed_models: list[str] | None = None,
        environment: str = "test",
    ) -> dict[str, Any]:
        result: dict[str, Any] = _parse(
            self._http.post(
                "/admin/keys",
                json={
                    "tenant": tenant,
                    "scopes": scopes,
                    "tier": tier,
                    "allowed_models": allowed_models,
                    "environment": environment,
                },
            )
        )
        return result

    def keys(self, tenant: str | None = None) -> list[dict[str, Any]]:
        params = {"tenant": tenant} if tenant else {}
        result: list[dict[str, Any]] = _parse(self._http.get("/admin/keys", params=params))
        return result

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        result: dict[str, Any] = _parse(self._http.delete(f"/admin/keys/{key_id}"))
        return result


def _parse(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            problem = response.json()
        except ValueError:
            problem = {"title": response.reason_phrase, "detail": response.text[:500]}
        raise ProblemError(response.status_code, problem)
    if response.status_code == 204 or not response.content:
        return None
    if response.headers.get("content-type", "").split(";")[0].endswith("json"):
        return response.json()
    return response.content


class JobFailedError(Exception):
    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        super().__init__(f"job {job['job_id']} {job['status']}: {job.get('failure_reason', '')}")


class _ProgressFile:
    """A file read in chunks, telling ``progress`` how many bytes went out."""

    def __init__(self, path: Path, progress: Callable[[int], None] | None) -> None:
        self._file = path.open("rb")
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(1 << 20 if size is None or size < 0 else size)
        if chunk and self._progress:
            self._progress(len(chunk))
        return chunk

    def fileno(self) -> int:
        # httpx sizes the upload from this; S3 refuses a POST without Content-Length.
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()
