"""The OpenAPI document: what powertools generates from the routes, plus what it cannot
infer (raw request bodies, problem responses, the bearer scheme)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

from gateway.models import ModelPolicy, NewKey

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
    "404": "Unknown model or job (also another tenant's)",
    "405": "Method not allowed",
    "406": "Output type not offered (async jobs)",
    "409": "Conflict",
    "413": "Too large for a synchronous call",
    "415": "Unsupported content type",
    "422": "Input does not match the schema",
    "429": "Rate limited",
    "502": "Model backend failed",
    "503": "No backend can serve the request now",
    "504": "Backend timeout",
}
_ROWS = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
# The canonical media types (aliases such as text/json are accepted but not listed).
_INVOCATION_BODIES = {
    "application/json": {
        "schema": {
            "type": "object",
            "description": "rows as `inputs` or `instances`, or an OIP v2 request",
            "properties": {"inputs": _ROWS, "instances": _ROWS},
        }
    },
    "text/csv": {"schema": {"type": "string", "description": "one row of numbers per line"}},
    "application/x-ndjson": {"schema": {"type": "string", "description": "a JSON array per line"}},
    "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
}
_JSON_OBJECT = {"application/json": {"schema": {"type": "object"}}}
# Success answers powertools cannot infer from the handlers' return annotations.
_SUCCESS = {
    ("/v1/models/{model}/invocations", "post"): {
        "200": "Model outputs",
        "202": "Accepted as an async job; Location says where to look",
    },
    ("/v1/models/{model}/jobs", "post"): {"201": "The job and its presigned upload"},
    ("/admin/policies/{model}", "put"): {"200": "Updated", "201": "Created"},
    ("/admin/policies/{model}", "delete"): {"204": "Deleted"},
    ("/admin/keys", "post"): {"201": "The new key, shown this once"},
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
    schemas = components.setdefault("schemas", {})
    schemas["Problem"] = _PROBLEM
    policy = ModelPolicy.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(policy.pop("$defs", {}))
    schemas["ModelPolicy"] = policy
    # The path names the model; the body may repeat it but need not.
    # The path names the model: the body need not (and, if it does, must agree).
    body = {**policy, "properties": dict(policy["properties"])}
    body["properties"].pop("model")
    body["required"] = [r for r in policy.get("required", []) if r != "model"]
    schemas["ModelPolicyBody"] = body
    new_key = NewKey.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(new_key.pop("$defs", {}))
    schemas["NewKey"] = new_key
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, operations in doc.get("paths", {}).items():
        if not path.startswith(("/v1/", "/admin/")):
            continue
        for method, operation in operations.items():
            operation["security"] = [{"bearer": []}]
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # powertools' validation shape; ours is problem+json
            for status, text in _ERRORS.items():
                responses.setdefault(status, {"description": text, "content": problem})
            for status, text in _SUCCESS.get((path, method), {}).items():
                responses[status] = {"description": text}
                if status != "204":
                    responses[status]["content"] = _JSON_OBJECT
            if (path, method) in _SUCCESS and "200" not in _SUCCESS[(path, method)]:
                responses.pop("200", None)
            if path.endswith("/invocations"):
                operation["requestBody"] = {"required": True, "content": _INVOCATION_BODIES}
            if path == "/admin/keys" and method == "post":
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/NewKey"}}
                    },
                }
            if path == "/admin/policies/{model}" and method == "put":
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ModelPolicyBody"}
                        }
                    },
                }
    return json.dumps(doc)


def document(app: APIGatewayHttpResolver) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_document_json(app))
    return doc
