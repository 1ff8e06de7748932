"""Job payloads in S3: inline inputs written by the gateway, presigned uploads and
downloads for everything larger."""

from __future__ import annotations

import contextlib
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


class S3ObjectStore:
    """Streaming reads and multipart writes for the worker: memory stays bounded by the
    part size whatever the object's size."""

    PART_BYTES = 8 * 1024 * 1024  # S3's minimum is 5 MiB for all but the last part

    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self.bucket = bucket

    def size(self, key: str) -> int | None:
        try:
            return int(self._client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return None
            raise DependencyUnavailableError("S3 is unavailable.", retry_after_s=2) from exc
        except BotoCoreError as exc:
            raise DependencyUnavailableError("S3 is unreachable.", retry_after_s=2) from exc

    def open(self, key: str) -> Any:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except (ClientError, BotoCoreError) as exc:
            raise DependencyUnavailableError("S3 is unavailable.", retry_after_s=2) from exc

    def put(self, key: str, body: bytes, content_type: str) -> None:
        S3PayloadStore(self._client, self.bucket).put(key, body, content_type)

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise DependencyUnavailableError("S3 is unavailable.", retry_after_s=2) from exc

    def writer(self, key: str, content_type: str) -> MultipartWriter:
        return MultipartWriter(self._client, self.bucket, key, content_type, self.PART_BYTES)


class MultipartWriter:
    """Writes one object: a single PUT when small, a multipart upload when not. Nothing is
    visible under the key until ``commit``; ``abort`` leaves nothing behind."""

    def __init__(self, client: Any, bucket: str, key: str, content_type: str, part: int) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._type = content_type
        self._part = part
        self._buffer = bytearray()  # the part being filled; never longer than a part
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def write(self, data: bytes | memoryview) -> None:
        """Copies ``data`` (bytes or a flat byte view) once, into the part being filled; a
        full part is sent as it is, and the next one starts in a new buffer."""
        view = memoryview(data)
        while view:
            room = self._part - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) == self._part:
                self._flush(self._buffer)
                self._buffer = bytearray()

    def _flush(self, chunk: bytearray) -> None:
        try:
            if self._upload_id is None:
                self._upload_id = self._client.create_multipart_upload(
                    Bucket=self._bucket, Key=self._key, ContentType=self._type
                )["UploadId"]
            number = len(self._parts) + 1
            etag = self._client.upload_part(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=chunk,
            )["ETag"]
        except (ClientError, BotoCoreError) as exc:
            raise DependencyUnavailableError("S3 is unavailable.", retry_after_s=2) from exc
        self._parts.append({"PartNumber": number, "ETag": etag})

    def commit(self) -> None:
        try:
            if self._upload_id is None:
                self._client.put_object(
                    Bucket=self._bucket,
                    Key=self._key,
                    Body=self._buffer,
                    ContentType=self._type,
                )
                return
            if self._buffer:
                self._flush(self._buffer)
                self._buffer = bytearray()
            self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        except (ClientError, BotoCoreError) as exc:
            raise DependencyUnavailableError("S3 is unavailable.", retry_after_s=2) from exc

    def abort(self) -> None:
        if self._upload_id is not None:
            # On failure the bucket's lifecycle rule cleans the incomplete upload.
            with contextlib.suppress(ClientError, BotoCoreError):
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
                )
        self._buffer.clear()
