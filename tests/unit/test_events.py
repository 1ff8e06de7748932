"""The sample events in events/ go through the real handlers (with fakes behind them) and
answer what a user expects, so the samples cannot drift from the code."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from async_worker.messages import job_ids
from functions import bootstrap
from functions.api import app as api
from functions.authorizer import app as authorizer
from functions.sweeper import app as sweeper
from gateway.admin import KeyAdmin, PolicyAdmin
from gateway.auth import ApiKeyAuthenticator, digest_key, principal_to_context
from gateway.authn import CredentialAuthenticator
from gateway.jobs import Job, JobService, JobStatus
from gateway.models import EndpointTarget, InputSchema, ModelPolicy
from gateway.notifications import for_job
from gateway.service import Gateway
from gateway.values import BackendReply
from tests.fakes import (
    BUCKET,
    FakeKeyStore,
    FakePolicyStore,
    InMemoryJobStore,
    InMemoryPayloadStore,
    RecordingInvoker,
    issue_key,
)

EVENTS = Path(__file__).resolve().parents[2] / "events"
REGION = "us-east-1"
SAMPLE_JOB_ID = "job_5f0c2a9e8b7d4c1a3e6f9b20"

# The digits policy the samples are about, as the local stack's demo.yaml declares it.
DIGITS = ModelPolicy.model_validate(
    {
        "model": "digits",
        "version": "1",
        "description": "Handwritten digit (8x8 pixels, 64 floats 0-16) to its label 0-9.",
        "slo_ms": 300,
        "timeout_ms": 5000,
        "realtime": {"endpoint_name": "digits-realtime", "capacity": 8, "expected_latency_ms": 5},
        "serverless": {
            "endpoint_name": "digits-serverless",
            "capacity": 4,
            "expected_latency_ms": 10,
            "idle_timeout_s": 60,
            "cold_start_ms": 1500,
        },
        "async_enabled": True,
        "input": {"features": 64},
    }
)
BREAST_CANCER = ModelPolicy(
    model="breast-cancer",
    realtime=EndpointTarget(endpoint_name="breast-cancer-realtime"),
    input=InputSchema(features=30),
)
ACME_ONLY = ModelPolicy(
    model="acme-digits",
    realtime=EndpointTarget(endpoint_name="digits-realtime"),
    allowed_tenants=["acme"],
)

# The job the job samples (GET /v1/jobs/{id}, S3, SQS, SNS) are about, once it completed.
SAMPLE_JOB = Job(
    job_id=SAMPLE_JOB_ID,
    tenant="demo",
    model="digits",
    version="1",
    status=JobStatus.COMPLETED,
    created_at=1_795_302_000.0,
    content_type="application/x-ndjson",
    accept="application/x-ndjson",
    max_bytes=1024 * 1024 * 1024,
    inference_id="nightly-batch-2026-11-21",
    idempotency_key="nightly-batch-2026-11-21",
    updated_at=1_795_302_031.25,
    queued_at=1_795_302_003.5,
    started_at=1_795_302_003.75,
    finished_at=1_795_302_031.25,
    records_done=5000,
    records_total=5000,
    attempts=1,
)
DIGIT_REPLY = BackendReply(
    b'{"predictions": [{"label": 0, "probabilities": [0.98, 0.0, 0.0, 0.0, 0.0, 0.0, 0.01, '
    b"0.0, 0.01, 0.0]}]}",
    "application/json",
)


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return doc


@dataclass
class LambdaContext:
    function_name: str = "infergw-dev-ApiFunction-Xk2d9VqLmN7e"
    aws_request_id: str = "3f1b6a52-9c7e-4d0a-b8e1-5a2c7d9f0e41"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = (
        "arn:aws:lambda:us-east-1:123456789012:function:infergw-dev-ApiFunction-Xk2d9VqLmN7e"
    )
    function_version: str = "$LATEST"
    log_group_name: str = "/aws/lambda/infergw-dev-ApiFunction-Xk2d9VqLmN7e"
    log_stream_name: str = "2026/11/21/[$LATEST]0f3c9e2b7a6d4e18"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


# --- installed services ---------------------------------------------------------------------


@dataclass
class Installed:
    policies: FakePolicyStore
    keys: FakeKeyStore
    invoker: RecordingInvoker
    jobs: InMemoryJobStore
    payloads: InMemoryPayloadStore


@pytest.fixture()
def installed() -> Iterator[Installed]:
    policies = FakePolicyStore([DIGITS, BREAST_CANCER, ACME_ONLY])
    keys = FakeKeyStore()
    invoker = RecordingInvoker(reply=DIGIT_REPLY)
    jobs = InMemoryJobStore()
    payloads = InMemoryPayloadStore()
    api_keys = ApiKeyAuthenticator(keys)
    bootstrap.use(
        bootstrap.Services(
            gateway=Gateway(policies, invoker, jobs=JobService(jobs, payloads)),
            authenticator=CredentialAuthenticator(api_keys, None),
            policy_admin=PolicyAdmin(policies),
            key_admin=KeyAdmin(keys, on_revoke=api_keys.forget),
        )
    )
    yield Installed(policies, keys, invoker, jobs, payloads)
    bootstrap.use()


def call_api(name: str) -> dict[str, Any]:
    return api.handler(load(name), LambdaContext())


def header(response: dict[str, Any], name: str) -> str | None:
    for key, value in (response.get("headers") or {}).items():
        if key.lower() == name.lower():
            return str(value)
    return None


def json_response(response: dict[str, Any], status: int) -> Any:
    assert response["statusCode"] == status, response
    assert (header(response, "content-type") or "").startswith("application/json")
    return json.loads(response["body"])


# --- API events -----------------------------------------------------------------------------

JOB_VIEW_KEYS = {
    "job_id",
    "model",
    "version",
    "variant",
    "status",
    "inference_id",
    "progress",
    "timings",
    "status_url",
}


def check_invoke(response: dict[str, Any], state: Installed) -> None:
    body = json_response(response, 200)
    assert body["predictions"][0]["label"] == 0
    assert header(response, "x-inference-route") == "realtime; reason=within-slo"
    assert header(response, "x-model-version") == "1"
    [call] = state.invoker.calls
    assert call.target.endpoint_name == "digits-realtime"
    assert len(json.loads(call.body)["inputs"][0]) == 64


def check_list_models(response: dict[str, Any], state: Installed) -> None:
    models = json_response(response, 200)
    # demo sees its models, not acme's own one
    assert [m["model"] for m in models] == ["breast-cancer", "digits"]
    digits = models[1]
    assert digits == {
        "model": "digits",
        "version": "1",
        "description": DIGITS.description,
        "slo_ms": 300,
        "sync_max_bytes": DIGITS.sync_max_bytes,
        "backends": ["realtime", "serverless", "async"],
        "input": {"features": 64, "dtype": "float32"},
    }
    assert "digits-realtime" not in response["body"]  # endpoint names stay private


def check_create_job(response: dict[str, Any], state: Installed) -> None:
    body = json_response(response, 201)
    assert body.keys() >= JOB_VIEW_KEYS
    assert body["job_id"].startswith("job_")
    assert body["status"] == "PENDING_UPLOAD"
    assert body["model"] == "digits"
    assert body["inference_id"] == "nightly-batch-2026-11-21"
    assert body["status_url"] == f"/v1/jobs/{body['job_id']}"
    assert header(response, "location") == body["status_url"]
    upload = body["upload"]
    assert upload["url"].startswith("https://")
    assert upload["fields"]["key"] == f"tenants/demo/jobs/{body['job_id']}/input"
    assert upload["fields"]["Content-Type"] == "application/x-ndjson"
    stored = state.jobs.get(body["job_id"])
    assert stored is not None and stored.idempotency_key == "nightly-batch-2026-11-21"


def check_get_job(response: dict[str, Any], state: Installed) -> None:
    body = json_response(response, 200)
    assert body.keys() >= JOB_VIEW_KEYS
    assert body["job_id"] == SAMPLE_JOB_ID
    assert body["status"] == "COMPLETED"
    assert body["progress"] == {"records_done": 5000, "records_total": 5000}
    assert body["timings"]["finished_at"] == SAMPLE_JOB.finished_at
    assert body["output_url"].startswith(f"https://{BUCKET}.s3.amazonaws.com/")
    assert SAMPLE_JOB.output_key in body["output_url"]


def check_put_policy(response: dict[str, Any], state: Installed) -> None:
    body = json_response(response, 200)  # an update of the stored revision 1
    assert body["model"] == "digits"
    assert body["revision"] == 2
    assert body["slo_ms"] == 250
    ModelPolicy.model_validate(body)  # the answer is a whole policy document
    stored = state.policies.get("digits")
    assert stored is not None and stored.slo_ms == 250


def check_create_key(response: dict[str, Any], state: Installed) -> None:
    body = json_response(response, 201)
    assert body.keys() == {
        "api_key",
        "key_id",
        "tenant",
        "scopes",
        "tier",
        "allowed_models",
        "created_at",
        "revoked_at",
        "last_used_at",
    }
    assert body["api_key"].startswith("igw_live_")
    assert body["tenant"] == "acme"
    assert body["scopes"] == ["invoke", "jobs"]
    assert body["tier"] == "free"
    assert body["allowed_models"] == ["digits"]
    assert body["revoked_at"] is None
    # Only the digest is stored, and the new key works at once.
    record = state.keys.get(digest_key(body["api_key"]))
    assert record is not None and record.key_id == body["key_id"]
    principal = bootstrap.authenticator().authenticate(f"Bearer {body['api_key']}")
    assert principal.tenant == "acme"


API_SAMPLES = {
    "api_invoke.json": check_invoke,
    "api_list_models.json": check_list_models,
    "api_create_job.json": check_create_job,
    "api_get_job.json": check_get_job,
    "api_admin_put_policy.json": check_put_policy,
    "api_admin_create_key.json": check_create_key,
}


def test_every_api_sample_is_checked() -> None:
    assert sorted(p.name for p in EVENTS.glob("api_*.json")) == sorted(API_SAMPLES)


@pytest.mark.parametrize("name", sorted(API_SAMPLES))
def test_api_sample(name: str, installed: Installed) -> None:
    event = load(name)
    # As API Gateway sends it for the stack's ANY /{proxy+} route on a named stage.
    assert event["version"] == "2.0"
    assert event["routeKey"] == "ANY /{proxy+}"
    stage = event["requestContext"]["stage"]
    assert event["rawPath"] == f"/{stage}/{event['pathParameters']['proxy']}"
    if name == "api_get_job.json":
        installed.jobs.create(SAMPLE_JOB)  # the job that sample asks about, since completed
    API_SAMPLES[name](call_api(name), installed)


def test_create_job_sample_sent_twice_is_one_job(installed: Installed) -> None:
    first = json_response(call_api("api_create_job.json"), 201)
    again = json_response(call_api("api_create_job.json"), 201)  # same Idempotency-Key
    assert again["job_id"] == first["job_id"]
    assert len(installed.jobs.jobs) == 1


def test_api_samples_carry_the_context_the_authorizer_produces(installed: Installed) -> None:
    _, record = issue_key(installed.keys, "demo", ("invoke", "jobs"))
    context_keys = principal_to_context(record.principal()).keys()
    for name in API_SAMPLES:
        assert load(name)["requestContext"]["authorizer"]["lambda"].keys() == context_keys, name


def test_admin_samples_carry_the_admin_scope() -> None:
    for name in ("api_admin_put_policy.json", "api_admin_create_key.json"):
        scopes = load(name)["requestContext"]["authorizer"]["lambda"]["scopes"].split(",")
        assert "admin" in scopes, name


# --- authorizer -----------------------------------------------------------------------------


def test_authorizer_sample_with_an_issued_key_is_authorized(installed: Installed) -> None:
    key, record = issue_key(installed.keys, "demo", ("invoke", "jobs"))
    event = load("authorizer_request.json")
    assert event["type"] == "REQUEST" and event["version"] == "2.0"
    event["headers"]["authorization"] = f"Bearer {key}"
    event["identitySource"] = [f"Bearer {key}"]
    answer = authorizer.handler(event, LambdaContext())
    assert answer == {"isAuthorized": True, "context": principal_to_context(record.principal())}
    assert answer["context"]["tenant"] == "demo"
    assert answer["context"]["scopes"] == "invoke,jobs"


def test_authorizer_sample_as_is_is_denied(installed: Installed) -> None:
    # Its placeholder key was never issued: API Gateway would answer 403.
    answer = authorizer.handler(load("authorizer_request.json"), LambdaContext())
    assert answer["isAuthorized"] is False
    assert answer["context"]["status"] == 401


# --- async pipeline -------------------------------------------------------------------------


def test_raw_s3_event_names_the_sample_job() -> None:
    event = load("s3_job_input_created.json")
    [record] = event["Records"]
    assert record["eventSource"] == "aws:s3"
    assert record["eventName"].startswith("ObjectCreated:")
    assert record["s3"]["bucket"]["name"] == BUCKET
    assert record["s3"]["object"]["key"] == SAMPLE_JOB.input_key
    assert job_ids(json.dumps(event)) == [SAMPLE_JOB_ID]


def test_sqs_event_wraps_the_s3_notification() -> None:
    event = load("sqs_job_input_created.json")
    [record] = event["Records"]
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"].endswith(":infergw-dev-jobs")
    assert record["md5OfBody"] == hashlib.md5(record["body"].encode()).hexdigest()
    assert json.loads(record["body"]) == load("s3_job_input_created.json")
    assert job_ids(record["body"]) == [SAMPLE_JOB_ID]


def test_sns_event_carries_the_notification_the_worker_publishes() -> None:
    event = load("sns_job_completed.json")
    [record] = event["Records"]
    assert record["EventSource"] == "aws:sns"
    sns = record["Sns"]
    assert sns["TopicArn"].endswith(":infergw-dev-job-succeeded")
    message = json.loads(sns["Message"])
    assert message["invocationStatus"] == "Completed"
    assert message["inferenceId"] == "nightly-batch-2026-11-21"
    assert message["jobId"] == SAMPLE_JOB_ID
    assert message["responseParameters"]["outputLocation"] == (
        f"s3://{BUCKET}/{SAMPLE_JOB.output_key}"
    )
    attributes = {k: v["Value"] for k, v in sns["MessageAttributes"].items()}
    assert attributes == {"tenant": "demo", "model": "digits", "status": "COMPLETED"}
    assert all(v["Type"] == "String" for v in sns["MessageAttributes"].values())
    # Exactly what the worker publishes for this job.
    published = for_job(SAMPLE_JOB, BUCKET, REGION, "application/x-ndjson")
    assert message == published.message
    assert attributes == published.attributes


# --- scheduled sweeper ------------------------------------------------------------------------


def test_sweeper_sample_expires_an_abandoned_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    event = load("schedule_sweeper.json")
    assert event["detail-type"] == "Scheduled Event"
    assert event["source"] == "aws.events"
    store = InMemoryJobStore()
    abandoned = dataclasses.replace(
        SAMPLE_JOB,
        job_id="job_00000000000000000000abcd",
        status=JobStatus.PENDING_UPLOAD,
        idempotency_key=None,
        finished_at=None,
        expires_at=1_000.0,  # its presigned POST expired long ago
    )
    store.create(abandoned)
    store.create(dataclasses.replace(SAMPLE_JOB, idempotency_key=None))
    monkeypatch.setenv("INFERGW_POLICIES_TABLE", "infergw-dev-policies")
    monkeypatch.setenv("INFERGW_KEYS_TABLE", "infergw-dev-keys")
    monkeypatch.setenv("INFERGW_JOBS_TABLE", "infergw-dev-jobs")
    clients: list[str] = []
    monkeypatch.setattr(sweeper.aws, "client", lambda service, **_: clients.append(service))
    monkeypatch.setattr(sweeper, "DynamoDBJobStore", lambda client, table: store)
    sweeper._jobs.cache_clear()
    try:
        assert sweeper.handler(event, LambdaContext()) == {"expired": 1}
        expired = store.get(abandoned.job_id)
        assert expired is not None and expired.status is JobStatus.EXPIRED
        completed = store.get(SAMPLE_JOB_ID)
        assert completed is not None and completed.status is JobStatus.COMPLETED
        # A warm call reuses the execution environment's client.
        assert sweeper.handler(event, LambdaContext()) == {"expired": 0}
        assert clients == ["dynamodb"]
    finally:
        sweeper._jobs.cache_clear()


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("application/x-npy; output=label", 201),
        ("text/csv; charset=utf-8", 201),
        ("application/json", 201),
        ("image/png", 406),
        ("application/x-ndjsonx", 406),
    ],
)
def test_a_job_output_type_the_worker_cannot_write_is_refused_up_front(
    installed: Installed, accept: str, status: int
) -> None:
    event = load("api_create_job.json")
    event["body"] = json.dumps({"content_type": "application/x-ndjson", "accept": accept})
    event["isBase64Encoded"] = False
    event["headers"] = {k: v for k, v in event["headers"].items() if k != "idempotency-key"}
    before = len(installed.jobs.jobs)
    response = api.handler(event, LambdaContext())
    assert response["statusCode"] == status, response["body"]
    if status == 406:
        problem = json.loads(response["body"])
        assert problem["type"] == "/problems/not-acceptable"
        assert "application/x-npy" in problem["offered"]
        assert len(installed.jobs.jobs) == before  # nothing was created
