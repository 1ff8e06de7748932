"""functions.bootstrap's real wiring: each part built on first use and shared, so that a
cold start builds only what its function's first request needs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from functions import bootstrap, tracing
from gateway.adapters import aws
from gateway.ports import NoSpans
from tests.fresh_python import run_fresh

SETTINGS = {
    "INFERGW_POLICIES_TABLE": "policies",
    "INFERGW_KEYS_TABLE": "keys",
    "INFERGW_LIMITS_TABLE": "limits",
    "INFERGW_USAGE_TABLE": "usage",
    "INFERGW_JOBS_TABLE": "jobs",
    "INFERGW_BUCKET": "bucket",
}


class FakeClient:
    def __init__(self, service: str) -> None:
        self.service = service


@pytest.fixture()
def created(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The AWS clients created, by service, in order; the wiring built from SETTINGS."""
    for name, value in SETTINGS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("INFERGW_JWKS_URL", raising=False)
    clients: list[str] = []

    def client(service: str, **_: Any) -> FakeClient:
        clients.append(service)
        return FakeClient(service)

    monkeypatch.setattr(aws, "client", client)
    bootstrap.settings.cache_clear()
    bootstrap.use()
    yield clients
    bootstrap.use()
    bootstrap.settings.cache_clear()


def test_the_gateway_is_built_with_one_dynamodb_client_and_nothing_else(
    created: list[str],
) -> None:
    gateway = bootstrap.gateway()
    assert created == ["dynamodb"]  # S3 waits for a job, SageMaker for a backend call
    assert bootstrap.gateway() is gateway
    assert gateway.jobs is not None


def test_the_authorizer_builds_the_authenticator_and_shares_the_client(
    created: list[str],
) -> None:
    authenticator = bootstrap.authenticator()
    assert created == ["dynamodb"]
    gateway = bootstrap.gateway()
    assert created == ["dynamodb"]
    everything = bootstrap.services()
    assert everything.gateway is gateway
    assert everything.authenticator is authenticator
    assert everything.key_admin is bootstrap.key_admin()
    assert everything.policy_admin is bootstrap.policy_admin()
    # A key revoked through this process is forgotten by its authenticator first.
    assert everything.revocation_listeners == [authenticator.forget]


def test_services_built_after_the_gateway_share_it_and_take_listeners(
    created: list[str],
) -> None:
    gateway = bootstrap.gateway()
    heard: list[str] = []
    bootstrap.on_revoke(heard.append)
    assert bootstrap.services().gateway is gateway
    authenticator = bootstrap.authenticator()
    assert bootstrap.services().revocation_listeners == [authenticator.forget, heard.append]


def test_racing_first_requests_build_one_gateway(created: list[str]) -> None:
    built: list[object] = []
    start = threading.Barrier(8)

    def first_request() -> None:
        start.wait()
        built.append(bootstrap.gateway())

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(gateway) for gateway in built}) == 1
    assert created == ["dynamodb"]


def test_a_lazy_part_is_built_once_on_first_use() -> None:
    created: list[int] = []

    class Client:
        def put_object(self, **kwargs: Any) -> dict[str, Any]:
            return kwargs

    def create() -> Client:
        created.append(1)
        return Client()

    lazy: Any = bootstrap._Lazy(create)
    assert created == []
    assert lazy.put_object(Key="k") == {"Key": "k"}
    assert lazy.put_object(Key="j") == {"Key": "j"}
    assert created == [1]


def test_tracing_off_is_a_no_op_without_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERGW_XRAY_SUBSEGMENTS", raising=False)
    tracing.spans.cache_clear()
    try:
        with tracing.spans().span("auth") as span:
            assert span is None
        assert isinstance(tracing.spans(), NoSpans)
    finally:
        tracing.spans.cache_clear()


def test_an_invocation_builds_no_job_service() -> None:
    """The gateway knows jobs are configured; their service, store and S3 wait for a job."""
    script = """
import json, sys
import functions.api.app
from functions import bootstrap
gateway = bootstrap.gateway()
print(json.dumps([gateway.jobs is not None, sorted(m for m in sys.modules if m.startswith(
    ("gateway.jobs", "gateway.adapters.s3", "gateway.adapters.dynamodb_jobs")))]))
"""
    assert run_fresh(script, {**SETTINGS, "AWS_DEFAULT_REGION": "us-east-1"}) == [True, []]


def test_the_sweeper_never_imports_pydantic() -> None:
    script = """
import json, sys
import functions.sweeper.app
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("gateway.models", "pydantic")))))
"""
    assert run_fresh(script, {**SETTINGS, "AWS_DEFAULT_REGION": "us-east-1"}) == []


def test_the_authorizer_never_imports_the_core_request_path() -> None:
    """Nor pydantic: the authorizer handles keys and principals (gateway.values), never a
    policy, and pydantic's import is a third of its cold start."""
    script = """
import json, sys
import functions.authorizer.app
from functions import bootstrap
bootstrap.authenticator()
print(json.dumps(sorted(m for m in sys.modules if m.startswith(
    ("gateway.service", "gateway.dispatch", "gateway.payload", "gateway.models", "pydantic",
     "aws_xray_sdk", "aws_lambda_powertools.event_handler")))))
"""
    assert run_fresh(script, {**SETTINGS, "AWS_DEFAULT_REGION": "us-east-1"}) == []
