"""The local endpoint host speaks the SageMaker runtime wire protocol: boto3's own
``sagemaker-runtime`` client parses its answers, errors included."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.exceptions import ClientError

from infergw.local.stack import Connection


@pytest.fixture()
def runtime(aws: boto3.session.Session, conn: Connection):  # type: ignore[no-untyped-def]
    return aws.client("sagemaker-runtime", endpoint_url=conn.sagemaker_runtime_url)


def test_invoke_endpoint(runtime) -> None:  # type: ignore[no-untyped-def]
    response = runtime.invoke_endpoint(
        EndpointName="digits-realtime",
        Body=json.dumps({"inputs": [[0.0] * 64]}),
        ContentType="application/json",
        Accept="application/json",
    )
    assert response["InvokedProductionVariant"] == "AllTraffic"
    body = json.loads(response["Body"].read())
    assert body["model"] == "digits" and len(body["predictions"]) == 1


def test_model_error_carries_the_containers_status(runtime) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as raised:
        runtime.invoke_endpoint(
            EndpointName="digits-realtime", Body=b"not,numbers", ContentType="text/csv"
        )
    error = raised.value.response
    assert error["Error"]["Code"] == "ModelError"
    assert error["OriginalStatusCode"] == 422
    assert "not a number" in error["OriginalMessage"]


def test_unknown_endpoint_is_a_validation_error(runtime) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ClientError) as raised:
        runtime.invoke_endpoint(EndpointName="nope", Body=b"{}", ContentType="application/json")
    assert raised.value.response["Error"]["Code"] == "ValidationError"
    assert "not found" in raised.value.response["Error"]["Message"]
