"""``/admin/...``: model policies, API keys and usage, behind the admin scope."""

from __future__ import annotations

import json
from typing import Annotated, Any, cast

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2
from pydantic import ValidationError

from functions import bootstrap
from functions.api.context import json_body, principal
from gateway.admin import key_summary
from gateway.errors import InvalidRequestError
from gateway.models import NewKey
from gateway.values import Scope

router = Router()  # type: ignore[no-untyped-call]


def _event() -> APIGatewayProxyEventV2:
    return cast(APIGatewayProxyEventV2, router.current_event)


def _admin() -> None:
    principal(_event(), Scope.ADMIN)


@router.get("/admin/policies", summary="All model policies")
def list_policies() -> list[dict[str, Any]]:
    _admin()
    return [p.model_dump(mode="json") for p in bootstrap.policy_admin().list()]


@router.get("/admin/policies/<model>", summary="One model policy, with its revision")
def get_policy(model: str) -> dict[str, Any]:
    _admin()
    return bootstrap.policy_admin().get(model).model_dump(mode="json")


@router.put(
    "/admin/policies/<model>",
    summary="Create or update a model policy",
    description="Send the revision you read (0 to create); a stale revision gets 409.",
)
def put_policy(model: str) -> Response[str]:
    _admin()
    document = json_body(_event())
    stored = bootstrap.policy_admin().put(model, document)
    return Response(
        201 if stored.revision == 1 else 200,
        "application/json",
        stored.model_dump_json(),
    )


@router.delete("/admin/policies/<model>", summary="Delete a model policy")
def delete_policy(model: str) -> Response[str]:
    _admin()
    bootstrap.policy_admin().delete(model)
    return Response(204, "application/json", "")


@router.post("/admin/keys", summary="Issue an API key (shown once)")
def create_key() -> Response[str]:
    _admin()
    # Parsed here, not by powertools' validation: an undecodable body must be a 4xx.
    try:
        body = NewKey.model_validate(json_body(_event()))
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        fields = ", ".join(e["field"] for e in errors)
        raise InvalidRequestError(
            f"Invalid key request field(s): {fields}.", errors=errors
        ) from None
    key, record = bootstrap.key_admin().create(
        body.tenant,
        [s.value for s in body.scopes],
        body.tier,
        body.allowed_models,
        body.environment,
    )
    return Response(201, "application/json", json.dumps({"api_key": key, **key_summary(record)}))


@router.get("/admin/keys", summary="API keys (never their secrets)")
def list_keys(tenant: Annotated[str | None, Query()] = None) -> list[dict[str, Any]]:
    _admin()
    return [key_summary(r) for r in bootstrap.key_admin().list(tenant)]


@router.delete("/admin/keys/<key_id>", summary="Revoke an API key")
def revoke_key(key_id: str) -> dict[str, Any]:
    _admin()
    return key_summary(bootstrap.key_admin().revoke(key_id))


@router.get("/admin/usage", summary="Usage of any tenant per day and model")
def admin_usage(
    tenant: Annotated[str, Query(min_length=1)],
    since: Annotated[str | None, Query(pattern=r"^\d{4}-\d{2}-\d{2}$")] = None,
) -> list[dict[str, Any]]:
    caller = principal(_event(), Scope.ADMIN)
    return bootstrap.gateway().usage(caller, tenant, since)


@router.get("/admin/stats", summary="This instance's live routing state")
def stats() -> dict[str, Any]:
    _admin()
    gateway = bootstrap.gateway()
    admission = bootstrap.services().admission
    return {
        "backends": gateway.live.snapshot(),
        "routes": [
            {"model": model, "route": route, "count": count}
            for (model, route, status), count in sorted(gateway.metrics.counts.items())
            if status < 400
        ],
        "fallbacks": gateway.dispatcher.fallbacks,
        "shadow": {
            model: {**vars(s), "agreement": s.agreement()}
            for model, s in gateway.dispatcher.shadow.items()
        },
        "limiter": None if admission is None else vars(admission.stats),
    }
