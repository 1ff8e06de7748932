"""A local SageMaker runtime: ``POST /endpoints/{name}/invocations`` on the real wire
protocol, in front of model-server processes it starts, so the gateway's boto3
``sagemaker-runtime`` client reaches local models unchanged."""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from infergw.local import processes

ACCOUNT = "123456789012"
_FORWARDED = ("content-type", "accept", "x-amzn-sagemaker-custom-attributes")


@dataclass
class EndpointSpec:
    name: str
    model: str
    version: str
    model_uri: str
    instances: int = 1

    @classmethod
    def of(cls, doc: dict[str, Any]) -> EndpointSpec:
        return cls(
            **{k: doc[k] for k in ("name", "model", "version", "model_uri") if k in doc},
            instances=int(doc.get("instances", 1)),
        )


@dataclass
class Endpoint:
    spec: EndpointSpec
    urls: list[str] = field(default_factory=list)
    procs: list[Any] = field(default_factory=list)
    _next: Any = None

    def start(self, log_dir: Path | None) -> None:
        for i in range(self.spec.instances):
            port = processes.free_port()
            log = str(log_dir / f"model-{self.spec.name}-{i}.log") if log_dir else None
            proc = processes.spawn(
                [
                    "-m",
                    "model_server",
                    "--model-uri",
                    self.spec.model_uri,
                    "--name",
                    self.spec.model,
                    "--version",
                    self.spec.version,
                    "--port",
                    str(port),
                ],
                log=log,
            )
            self.procs.append(proc)
            self.urls.append(f"http://127.0.0.1:{port}")
        for url, proc in zip(self.urls, self.procs, strict=True):
            processes.wait_until_ready(url + "/ping", proc)
        self._next = itertools.cycle(self.urls)

    def pick(self) -> str:
        return str(next(self._next))


def _error(status: int, code: str, message: str, **members: Any) -> Response:
    # rest-json errors as botocore parses them: the code in x-amzn-ErrorType, the
    # modeled members (OriginalStatusCode, ...) in the body.
    return JSONResponse(
        {"message": message, **members}, status_code=status, headers={"x-amzn-ErrorType": code}
    )


def create_app(specs: list[EndpointSpec], log_dir: Path | None = None) -> Starlette:
    endpoints = {spec.name: Endpoint(spec) for spec in specs}
    state: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        for endpoint in endpoints.values():
            endpoint.start(log_dir)
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
            state["client"] = client
            try:
                yield
            finally:
                processes.stop([p for e in endpoints.values() for p in e.procs])

    async def invoke(request: Request) -> Response:
        name = request.path_params["name"]
        endpoint = endpoints.get(name)
        if endpoint is None:
            return _error(
                400, "ValidationError", f"Endpoint {name} of account {ACCOUNT} not found."
            )
        body = await request.body()
        headers = {h: request.headers[h] for h in _FORWARDED if h in request.headers}
        try:
            reply = await state["client"].post(
                endpoint.pick() + "/invocations", content=body, headers=headers
            )
        except httpx.TransportError as exc:
            return _error(
                503, "ServiceUnavailable", f"Endpoint {name} is unavailable: {type(exc).__name__}."
            )
        if reply.status_code >= 400:
            return _error(
                424,
                "ModelError",
                f"Received client error ({reply.status_code}) from primary with message "
                f'"{reply.text[:512]}".',
                OriginalStatusCode=reply.status_code,
                OriginalMessage=reply.text,
                LogStreamArn=f"arn:aws:logs:local:{ACCOUNT}:log-group:/aws/sagemaker/Endpoints/{name}",
            )
        return Response(
            reply.content,
            media_type=reply.headers.get("content-type", "application/json"),
            headers={"x-Amzn-Invoked-Production-Variant": "AllTraffic"},
        )

    async def describe(_: Request) -> Response:
        return JSONResponse(
            {
                n: {"instances": e.urls, "pids": [p.pid for p in e.procs], "model": e.spec.model}
                for n, e in endpoints.items()
            }
        )

    return Starlette(
        routes=[
            Route("/endpoints/{name}/invocations", invoke, methods=["POST"]),
            Route("/endpoints", describe, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="endpoint_host", description=__doc__)
    parser.add_argument("--config", required=True, help='JSON file: {"endpoints": [...]}')
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--log-dir")
    args = parser.parse_args(argv)
    doc = json.loads(Path(args.config).read_text())
    specs = [EndpointSpec.of(e) for e in doc["endpoints"]]
    app = create_app(specs, Path(args.log_dir) if args.log_dir else None)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
