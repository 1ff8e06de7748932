"""The worker's output writer against the S3 emulator over HTTP: a multipart upload whose
parts go up in the background arrives whole and in order, and an aborted one leaves
neither an object nor an open upload behind."""

from __future__ import annotations

import os
from typing import Any

import boto3
import pytest

from gateway.adapters.s3 import MultipartWriter, S3ObjectStore
from infergw.local.stack import Connection

PART = S3ObjectStore.PART_BYTES  # S3 refuses parts under 5 MiB but the last


@pytest.fixture(scope="module")
def s3(conn: Connection, aws: boto3.session.Session) -> Any:
    return aws.client("s3", endpoint_url=conn.aws_endpoint_url)


@pytest.fixture(scope="module")
def bucket(conn: Connection) -> str:
    return conn.resources["INFERGW_BUCKET"]


def open_uploads(s3: Any, bucket: str, key: str) -> list[object]:
    return list(s3.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []))


@pytest.mark.parametrize("in_flight", [1, 3])
def test_parts_uploaded_in_the_background_make_the_whole_object(
    s3: Any, bucket: str, in_flight: int
) -> None:
    data = os.urandom(PART * 3 + PART // 3)  # three whole parts and a short last one
    key = f"tests/multipart/whole-{in_flight}"
    writer = MultipartWriter(s3, bucket, key, "application/octet-stream", PART, in_flight)
    for start in range(0, len(data), 1 << 20):  # 1 MiB writes, as the worker's batches
        writer.write(memoryview(data)[start : start + (1 << 20)])
    store = S3ObjectStore(s3, bucket)
    assert store.size(key) is None  # nothing visible before commit
    writer.commit()
    assert store.open(key).read() == data
    assert open_uploads(s3, bucket, key) == []


def test_an_aborted_upload_leaves_nothing(s3: Any, bucket: str) -> None:
    key = "tests/multipart/aborted"
    writer = S3ObjectStore(s3, bucket).writer(key, "application/octet-stream")
    writer.write(os.urandom(PART + PART // 2))  # one part sent (in the background), half filled
    writer.abort()
    assert S3ObjectStore(s3, bucket).size(key) is None
    assert open_uploads(s3, bucket, key) == []
