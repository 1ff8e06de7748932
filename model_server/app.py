"""The model container's HTTP interface, as SageMaker hosting expects it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from functions.problems import PROBLEM_JSON, problem_document
from gateway.errors import GatewayError, MalformedRequestError
from model_runtime import codecs
from model_runtime.onnx_model import OnnxModel
from model_server import asgi
from model_server.batching import Batcher, BatchPolicy, Outputs

# Above this many rows inference leaves the event loop, so /ping stays responsive.
INLINE_ROWS = 64
MAX_BODY_BYTES = 100 * 1024 * 1024


class Inference:
    """The model, called directly or through a batcher; one for both protocols."""

    def __init__(self, model: OnnxModel, batching: BatchPolicy | None) -> None:
        self.model = model
        self.batcher = Batcher(model.predict, batching) if batching else None

    async def predict(self, matrix: np.ndarray, inline_rows: int = INLINE_ROWS) -> Outputs:
        if self.batcher is not None:
            self.model.check(matrix)  # before batching, so that a bad request fails alone
            return await self.batcher.predict(matrix)
        if matrix.shape[0] <= inline_rows:
            return self.model.predict(matrix)
        return await anyio.to_thread.run_sync(self.model.predict, matrix)


class Invocations:
    """``POST /invocations`` as a plain ASGI app: Starlette's request and response objects,
    router and middleware cost about a third of the server's CPU time on a one-row request
    (measured with wrk), and the gateway shares the cores. The responses are the bytes
    Starlette sent."""

    def __init__(self, inference: Inference) -> None:
        self.inference = inference
        self.info = inference.model.info

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await asgi.read_body(receive)
        if body is None:
            return  # the client went away: nobody to answer
        try:
            if len(body) > MAX_BODY_BYTES:
                raise MalformedRequestError("The body exceeds the container's limit.")
            matrix = codecs.to_matrix(body, asgi.header(scope, b"content-type"))
            outputs = await self.inference.predict(matrix)
        except GatewayError as exc:
            problem = asgi.render_json(problem_document(exc))
            await asgi.respond(send, exc.status, PROBLEM_JSON.encode(), problem)
            return
        encoded = codecs.encode_json(outputs, model=self.info.name, version=self.info.version)
        await asgi.respond(send, 200, b"application/json", encoded)


def create_app(model: OnnxModel, batching: BatchPolicy | None = None) -> ASGIApp:
    """The container's ASGI app; with ``batching``, concurrent requests share model calls."""
    info = model.info
    inference = Inference(model, batching)
    invocations = Invocations(inference)

    async def ping(_: Request) -> Response:
        return JSONResponse(
            {
                "status": "healthy",
                "model": info.name,
                "version": info.version,
                "providers": list(info.providers),
            }
        )

    async def oip_ready(_: Request) -> Response:
        return JSONResponse({"name": info.name, "ready": True})

    async def oip_infer(request: Request) -> Response:
        """Open Inference Protocol v2, as KServe, Triton and MLServer speak it."""
        if request.path_params["name"] != info.name:
            return JSONResponse({"error": f"no model {request.path_params['name']}"}, 404)
        try:
            body = await request.body()
            matrix = codecs.to_matrix(body, "application/json")
            outputs = await inference.predict(matrix, inline_rows=-1)  # unbatched: in a thread
        except GatewayError as exc:
            return JSONResponse({"error": exc.detail}, status_code=exc.status)
        return Response(
            codecs.encode_oip(outputs, model=info.name, version=info.version),
            media_type="application/json",
        )

    async def batching_stats(_: Request) -> Response:
        batcher = inference.batcher
        if batcher is None:
            return JSONResponse({"enabled": False})
        return JSONResponse(
            {
                "enabled": True,
                "max_rows": batcher.policy.max_rows,
                "max_delay_ms": batcher.policy.max_delay_s * 1000,
                **batcher.stats.as_dict(),
            }
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if inference.batcher is not None:
                inference.batcher.close()

    routed = Starlette(
        routes=[
            Route("/ping", ping, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"]),
            Route("/v2/health/ready", oip_ready, methods=["GET"]),
            Route("/v2/models/{name}/ready", oip_ready, methods=["GET"]),
            Route("/v2/models/{name}/infer", oip_infer, methods=["POST"]),
            Route("/batching", batching_stats, methods=["GET"]),
        ],
        lifespan=lifespan,
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # The one route under load skips the router; anything else, e.g. a wrong method or
        # a trailing slash, gets Starlette's own answer.
        if (
            scope["type"] == "http"
            and scope["path"] == "/invocations"
            and scope["method"] == "POST"
            and not scope.get("root_path")
        ):
            await invocations(scope, receive, send)
        else:
            await routed(scope, receive, send)

    return app
