"""The worker's output writer (gateway/adapters/s3.py's MultipartWriter) against a fake S3
client that records what each call would have sent: parts of exactly the part size, the
bytes written in order, nothing visible before ``commit``, and each write copied once, so
that a caller may reuse what it wrote as soon as ``write`` returns."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from gateway.adapters.s3 import MultipartWriter
from gateway.errors import DependencyUnavailableError

PART = 64


class RecordingS3:
    """Each call's arguments, with bodies as the bytes on the wire at the time of the call."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._fail_on = fail_on

    def _record(self, name: str, kwargs: dict[str, Any]) -> None:
        if name == self._fail_on:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"}}, name)
        if "Body" in kwargs:
            kwargs = {**kwargs, "Body": bytes(kwargs["Body"])}
        self.calls.append((name, kwargs))

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self._record("put_object", kwargs)
        return {}

    def create_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self._record("create_multipart_upload", kwargs)
        return {"UploadId": "upload-1"}

    def upload_part(self, **kwargs: Any) -> dict[str, Any]:
        self._record("upload_part", kwargs)
        return {"ETag": f'"etag-{kwargs["PartNumber"]}"'}

    def complete_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self._record("complete_multipart_upload", kwargs)
        return {}

    def abort_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self._record("abort_multipart_upload", kwargs)
        return {}

    def named(self, name: str) -> list[dict[str, Any]]:
        return [kwargs for called, kwargs in self.calls if called == name]


def _writer(s3: RecordingS3) -> MultipartWriter:
    return MultipartWriter(s3, "bucket", "jobs/j1/output", "application/x-npy", PART)


def test_a_small_output_is_one_put_at_commit() -> None:
    s3 = RecordingS3()
    writer = _writer(s3)
    writer.write(b"header:")
    writer.write(memoryview(np.arange(4, dtype=np.float32)).cast("B"))
    assert s3.calls == []  # nothing is sent before commit
    writer.commit()
    assert [name for name, _ in s3.calls] == ["put_object"]
    (put,) = s3.named("put_object")
    assert put["Body"] == b"header:" + np.arange(4, dtype=np.float32).tobytes()
    assert put["ContentType"] == "application/x-npy" and put["Key"] == "jobs/j1/output"


@pytest.mark.parametrize("total", [PART * 3, PART * 3 + 17], ids=["whole-parts", "a-short-last"])
def test_a_large_output_is_sent_in_parts_of_exactly_the_part_size(total: int) -> None:
    data = np.random.default_rng(0).integers(0, 256, size=total, dtype=np.uint8).tobytes()
    s3 = RecordingS3()
    writer = _writer(s3)
    # Pieces that straddle part boundaries, as bytes and as views.
    pieces = [data[:5], memoryview(data)[5:150], data[150:151], memoryview(data)[151:]]
    for piece in pieces:
        writer.write(piece)
    assert s3.named("complete_multipart_upload") == []  # not visible before commit
    writer.commit()

    parts = s3.named("upload_part")
    assert [p["PartNumber"] for p in parts] == list(range(1, len(parts) + 1))
    assert [len(p["Body"]) for p in parts[:-1]] == [PART] * (len(parts) - 1)
    assert 0 < len(parts[-1]["Body"]) <= PART
    assert b"".join(p["Body"] for p in parts) == data
    (complete,) = s3.named("complete_multipart_upload")
    assert complete["MultipartUpload"]["Parts"] == [
        {"PartNumber": p["PartNumber"], "ETag": f'"etag-{p["PartNumber"]}"'} for p in parts
    ]
    assert s3.named("put_object") == []


def test_what_was_written_may_change_once_write_returns() -> None:
    s3 = RecordingS3()
    writer = _writer(s3)
    array = np.full(PART // 4 + 2, 7, dtype=np.float32)  # one part and a bit
    writer.write(memoryview(array).cast("B"))
    array[:] = 0  # the caller reuses its memory: what was written is already copied
    writer.commit()
    sent = b"".join(p["Body"] for p in s3.named("upload_part"))
    assert sent == np.full(PART // 4 + 2, 7, dtype=np.float32).tobytes()


def test_abort_after_a_part_aborts_the_upload_and_commits_nothing() -> None:
    s3 = RecordingS3()
    writer = _writer(s3)
    writer.write(bytes(PART + 1))
    writer.abort()
    assert s3.named("abort_multipart_upload") == [
        {"Bucket": "bucket", "Key": "jobs/j1/output", "UploadId": "upload-1"}
    ]
    assert s3.named("complete_multipart_upload") == [] and s3.named("put_object") == []


@pytest.mark.parametrize("failing", ["upload_part", "put_object", "complete_multipart_upload"])
def test_an_s3_error_is_a_dependency_error(failing: str) -> None:
    writer = _writer(RecordingS3(fail_on=failing))
    size = 10 if failing == "put_object" else PART * 2 + 1
    with pytest.raises(DependencyUnavailableError):
        writer.write(bytes(size))
        writer.commit()
