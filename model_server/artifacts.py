"""Model artifacts by URI: ``s3://bucket/key`` (as SageMaker's ModelDataUrl) or a file path."""

from __future__ import annotations

from pathlib import Path


def fetch(uri: str) -> bytes:
    if uri.startswith("s3://"):
        from gateway.adapters import aws

        bucket, _, key = uri[len("s3://") :].partition("/")
        return aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]
    return Path(uri).read_bytes()
