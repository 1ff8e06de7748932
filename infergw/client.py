"""A small Python client for the gateway's HTTP API."""

from __future__ import annotations

import json
import os
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
    ) -> dict[str, Any]:
        result: dict[str, Any] = _parse(
            self._http.post(
                "/admin/keys",
                json={
                    "tenant": tenant,
                    "scopes": scopes,
                    "tier": tier,
                    "allowed_models": allowed_models,
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
