"""Job payloads in S3: inline inputs written by the gateway, presigned uploads and
downloads for everything larger."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import partial
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
    visible under the key until ``commit``; ``abort`` leaves nothing behind.

    A full part uploads in a thread while the caller fills the next, as s3transfer's
    concurrent parts do: a worker's model does not wait for S3 unless S3 is the slower of
    the two. At most ``in_flight`` parts upload at once (0: each in the caller's thread),
    so memory stays within ``in_flight + 1`` parts. A failed upload is raised by the
    ``write`` that fills the next part beyond that bound, or by ``commit``."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        content_type: str,
        part: int,
        in_flight: int = 1,
    ) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._type = content_type
        self._part = part
        self._buffer = bytearray()  # the part being filled; never longer than a part
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []  # uploaded, in part number order
        self._in_flight = in_flight
        self._uploading: deque[tuple[int, Future[dict[str, Any]]]] = deque()  # oldest first
        self._threads: ThreadPoolExecutor | None = None

    def write(self, data: bytes | memoryview) -> None:
        """Copies ``data`` (bytes or a flat byte view) once, into the part being filled; a
        full part is sent as it is, and the next one starts in a new buffer."""
        view = memoryview(data)
        while view:
            room = self._part - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) == self._part:
                self._send(self._buffer)
                self._buffer = bytearray()

    def _send(self, chunk: bytearray) -> None:
        if self._upload_id is None:
            self._upload_id = _s3(
                self._client.create_multipart_upload,
                Bucket=self._bucket,
                Key=self._key,
                ContentType=self._type,
            )["UploadId"]
        number = len(self._parts) + len(self._uploading) + 1
        upload = partial(
            self._client.upload_part,
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=chunk,
        )
        if self._in_flight == 0:
            self._parts.append({"PartNumber": number, "ETag": _s3(upload)["ETag"]})
            return
        while len(self._uploading) >= self._in_flight:
            self._settle_oldest()
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self._in_flight, thread_name_prefix="s3-part")
        self._uploading.append((number, self._threads.submit(upload)))

    def _settle_oldest(self) -> None:
        number, upload = self._uploading.popleft()
        self._parts.append({"PartNumber": number, "ETag": _s3(upload.result)["ETag"]})

    def commit(self) -> None:
        if self._upload_id is None:
            _s3(
                self._client.put_object,
                Bucket=self._bucket,
                Key=self._key,
                Body=self._buffer,
                ContentType=self._type,
            )
            return
        if self._buffer:
            self._send(self._buffer)
            self._buffer = bytearray()
        while self._uploading:
            self._settle_oldest()
        self._stop_threads()
        _s3(
            self._client.complete_multipart_upload,
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )

    def abort(self) -> None:
        """Ends the upload, if any, once the parts still uploading are done with (S3 may
        keep a part that lands after the abort)."""
        for _number, upload in self._uploading:
            upload.cancel()  # those not started yet
        wait([upload for _number, upload in self._uploading])
        self._uploading.clear()
        self._stop_threads()
        if self._upload_id is not None:
            # On failure the bucket's lifecycle rule cleans the incomplete upload.
            with contextlib.suppress(ClientError, BotoCoreError):
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
                )
        self._buffer.clear()

    def _stop_threads(self) -> None:
        if self._threads is not None:
            self._threads.shutdown()
            self._threads = None


def _s3(call: Callable[..., dict[str, Any]], **params: Any) -> dict[str, Any]:
    """An S3 call whose failure is S3's unavailability to the worker's caller."""
    try:
        return call(**params)
    except (ClientError, BotoCoreError) as exc:
        raise DependencyUnavailableError("S3 is unavailable.", retry_after_s=2) from exc
