"""functions.authorizer.app.handler: the HTTP API Lambda authorizer (payload 2.0, simple)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from functions import bootstrap
from functions.authorizer import app as authorizer
from gateway.auth import ApiKeyAuthenticator, new_api_key, principal_from_context
from gateway.values import Principal
from tests.fakes import FakeClock, InMemoryKeyStore, issue_key


def authorizer_event(authorization: str | None) -> dict[str, Any]:
    headers = {"host": "abc123.execute-api.eu-west-1.amazonaws.com", "user-agent": "pytest"}
    if authorization is not None:
        headers["authorization"] = authorization
    return {
        "version": "2.0",
        "type": "REQUEST",
        "routeArn": "arn:aws:execute-api:eu-west-1:123456789012:abc123/dev/POST/v1/models/iris",
        "identitySource": [authorization] if authorization else [],
        "routeKey": "ANY /{proxy+}",
        "rawPath": "/dev/v1/models/iris/invocations",
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "http": {
                "method": "POST",
                "path": "/dev/v1/models/iris/invocations",
                "protocol": "HTTP/1.1",
                "sourceIp": "192.0.2.10",
                "userAgent": "pytest",
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "ANY /{proxy+}",
            "stage": "dev",
        },
        "pathParameters": {"proxy": "v1/models/iris/invocations"},
    }


@pytest.fixture()
def keys() -> InMemoryKeyStore:
    return InMemoryKeyStore()


@pytest.fixture(autouse=True)
def installed(keys: InMemoryKeyStore) -> Iterator[ApiKeyAuthenticator]:
    authenticator = ApiKeyAuthenticator(keys, cache_ttl_s=30.0, clock=FakeClock())
    bootstrap.use(authenticator=authenticator)
    yield authenticator
    bootstrap.use()


def test_valid_key_is_authorized_with_the_principal_as_context(keys: InMemoryKeyStore) -> None:
    key, record = issue_key(
        keys, "tenant-a", ("invoke", "jobs"), allowed_models=frozenset({"iris"})
    )
    result = authorizer.handler(authorizer_event(f"Bearer {key}"), None)
    assert result["isAuthorized"] is True
    context = result["context"]
    assert context["tenant"] == "tenant-a"
    assert context["key_id"] == record.key_id
    assert key not in str(context)  # the secret never travels on
    # what the API function reads back is the same principal
    assert principal_from_context(context) == Principal(
        tenant="tenant-a",
        key_id=record.key_id,
        scopes=frozenset({"invoke", "jobs"}),
        allowed_models=frozenset({"iris"}),
    )


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer not-an-infergw-key",
        f"Bearer {new_api_key()}",  # well-formed but unknown
    ],
    ids=["missing", "empty", "basic", "no-credential", "foreign-credential", "unknown-key"],
)
def test_bad_or_missing_credentials_are_denied_with_status_401(authorization: str | None) -> None:
    result = authorizer.handler(authorizer_event(authorization), None)
    assert result["isAuthorized"] is False
    assert result["context"]["status"] == 401
    assert result["context"]["reason"]


def test_revoked_key_is_denied(keys: InMemoryKeyStore) -> None:
    key, record = issue_key(keys)
    keys.put(dataclasses.replace(record, revoked_at="2026-02-01T00:00:00Z"))
    result = authorizer.handler(authorizer_event(f"Bearer {key}"), None)
    assert result == {
        "isAuthorized": False,
        "context": {"reason": "The API key has been revoked.", "status": 401},
    }


def test_an_event_without_headers_is_denied() -> None:
    event = authorizer_event(None)
    del event["headers"]
    assert authorizer.handler(event, None)["isAuthorized"] is False
