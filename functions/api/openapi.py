"""The OpenAPI document: what powertools generates from the routes, plus what it cannot
infer (raw request bodies, problem responses, the bearer scheme)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

from gateway.payload import SUPPORTED_CONTENT_TYPES

_PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}
_ERRORS = {
    "400": "Malformed request",
    "401": "Missing or invalid credentials",
    "403": "Not allowed",
    "404": "Unknown model",
    "413": "Too large for a synchronous call",
    "415": "Unsupported content type",
    "422": "Input does not match the model's schema",
    "429": "Rate limited",
    "502": "Model backend failed",
    "503": "No backend can serve the request now",
    "504": "Backend timeout",
}


@cache
def _document_json(app: APIGatewayHttpResolver) -> str:
    doc: dict[str, Any] = json.loads(
        app.get_openapi_json_schema(
            title="infergw",
            version="1",
            description="One HTTP front door for ML models.",
        )
    )
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {})["Problem"] = _PROBLEM
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, operations in doc.get("paths", {}).items():
        for operation in operations.values():
            if not path.startswith("/v1/"):
                continue
            operation["security"] = [{"bearer": []}]
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, text in _ERRORS.items():
                responses.setdefault(status, {"description": text, "content": problem})
            if path.endswith("/invocations"):
                operation["requestBody"] = {
                    "required": True,
                    "content": {ct: {"schema": {}} for ct in SUPPORTED_CONTENT_TYPES},
                }
                responses["200"] = {
                    "description": "Model outputs",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
    return json.dumps(doc)


def document(app: APIGatewayHttpResolver) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_document_json(app))
    return doc
