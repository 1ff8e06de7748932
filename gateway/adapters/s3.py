"""Job payloads in S3: inline inputs written by the gateway, presigned uploads and
downloads for everything larger."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from gateway.errors import DependencyUnavailableError


class S3PayloadStore:
    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self._bucket = bucket

    def put(self, key: str, body: bytes, content_type: str) -> None:
        try:
            self._client.put_object(
                Bucket=self._bucket, Key=key, Body=body, ContentType=content_type
            )
        except (ClientError, BotoCoreError) as exc:
            raise DependencyUnavailableError(
                "The payload store is unavailable.", retry_after_s=2
            ) from exc

    def presign_upload(
        self, key: str, max_bytes: int, content_type: str, expires_s: int
    ) -> dict[str, object]:
        """A POST policy for exactly this key, this content type and at most ``max_bytes``
        (S3 enforces both; emulators may not, so workers check the size again)."""
        post = self._client.generate_presigned_post(
            Bucket=self._bucket,
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[
                {"Content-Type": content_type},
                ["content-length-range", 1, max_bytes],
            ],
            ExpiresIn=expires_s,
        )
        return {
            "method": "POST",
            "url": post["url"],
            "fields": post["fields"],
            "max_bytes": max_bytes,
            "expires_in_s": expires_s,
        }

    def presign_download(self, key: str, expires_s: int) -> str:
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=expires_s
        )
        return url
