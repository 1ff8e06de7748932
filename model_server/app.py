"""The model container's HTTP interface, as SageMaker hosting expects it."""

from __future__ import annotations

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from functions.problems import PROBLEM_JSON, problem_document
from gateway.errors import GatewayError, MalformedRequestError
from model_runtime import codecs
from model_runtime.onnx_model import OnnxModel

# Above this many rows inference leaves the event loop, so /ping stays responsive.
_INLINE_ROWS = 64
MAX_BODY_BYTES = 100 * 1024 * 1024


def create_app(model: OnnxModel) -> Starlette:
    info = model.info

    async def ping(_: Request) -> Response:
        return JSONResponse(
            {
                "status": "healthy",
                "model": info.name,
                "version": info.version,
                "providers": list(info.providers),
            }
        )

    async def invocations(request: Request) -> Response:
        try:
            body = await request.body()
            if len(body) > MAX_BODY_BYTES:
                raise MalformedRequestError("The body exceeds the container's limit.")
            matrix = codecs.to_matrix(body, request.headers.get("content-type"))
            if matrix.shape[0] <= _INLINE_ROWS:
                outputs = model.predict(matrix)
            else:
                outputs = await anyio.to_thread.run_sync(model.predict, matrix)
        except GatewayError as exc:
            return JSONResponse(
                problem_document(exc), status_code=exc.status, media_type=PROBLEM_JSON
            )
        return Response(
            codecs.encode_json(outputs, model=info.name, version=info.version),
            media_type="application/json",
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
            outputs = await anyio.to_thread.run_sync(model.predict, matrix)
        except GatewayError as exc:
            return JSONResponse({"error": exc.detail}, status_code=exc.status)
        return Response(
            codecs.encode_oip(outputs, model=info.name, version=info.version),
            media_type="application/json",
        )

    return Starlette(
        routes=[
            Route("/ping", ping, methods=["GET"]),
            Route("/invocations", invocations, methods=["POST"]),
            Route("/v2/health/ready", oip_ready, methods=["GET"]),
            Route("/v2/models/{name}/ready", oip_ready, methods=["GET"]),
            Route("/v2/models/{name}/infer", oip_infer, methods=["POST"]),
        ]
    )
