"""The worker's output writer (gateway/adapters/s3.py's MultipartWriter) against a fake S3
client that records what each call would have sent: parts of exactly the part size, the
bytes written in order, nothing visible before ``commit``, and each write copied once, so
that a caller may reuse what it wrote as soon as ``write`` returns."""

from __future__ import annotations

import threading
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


# -- parts upload in the background while the next fills ----------------------------------
class SlowS3(RecordingS3):
    """Part uploads that wait for the test's word (``go[n]``, set by the test or by another
    part's end) and log when they start and end, in order across threads."""

    def __init__(self, parts: int) -> None:
        super().__init__()
        self.go = {n: threading.Event() for n in range(1, parts + 1)}
        self.started = {n: threading.Event() for n in range(1, parts + 1)}
        self.log: list[str] = []
        self.then: dict[int, int] = {}  # part n's end lets part m go

    def upload_part(self, **kwargs: Any) -> dict[str, Any]:
        number = kwargs["PartNumber"]
        self.started[number].set()
        if not self.go[number].wait(10):
            self.log.append(f"part {number} never let go")
        self.log.append(f"end {number}")
        if number in self.then:
            self.go[self.then[number]].set()
        return super().upload_part(**kwargs)

    def abort_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self.log.append("abort")
        return super().abort_multipart_upload(**kwargs)


def test_a_full_part_uploads_while_the_caller_fills_the_next() -> None:
    s3 = SlowS3(parts=2)
    writer = _writer(s3)
    writer.write(bytes(range(PART)))  # part 1 is full: its upload starts and waits
    assert s3.started[1].wait(10)
    writer.write(b"\xff" * (PART - 1))  # returns while part 1 is still uploading
    assert s3.log == []
    s3.go[1].set()
    s3.go[2].set()
    writer.commit()
    assert s3.log == ["end 1", "end 2"]  # the short last part, sent at commit
    parts = s3.named("upload_part")
    assert b"".join(p["Body"] for p in parts) == bytes(range(PART)) + b"\xff" * (PART - 1)


def test_parts_that_finish_out_of_order_complete_in_part_order() -> None:
    s3 = SlowS3(parts=3)
    s3.then = {3: 2, 2: 1}  # part 3 ends first, then 2, then 1
    s3.go[3].set()
    writer = MultipartWriter(s3, "bucket", "k", "application/x-npy", PART, in_flight=3)
    writer.write(b"".join(bytes([n]) * PART for n in (1, 2, 3)))
    writer.commit()
    assert s3.log == ["end 3", "end 2", "end 1"]
    (complete,) = s3.named("complete_multipart_upload")
    assert complete["MultipartUpload"]["Parts"] == [
        {"PartNumber": n, "ETag": f'"etag-{n}"'} for n in (1, 2, 3)
    ]


def test_a_failed_background_upload_fails_commit_and_abort_ends_the_upload() -> None:
    s3 = RecordingS3(fail_on="upload_part")
    writer = _writer(s3)
    writer.write(bytes(PART))  # sent in the background; it fails there
    with pytest.raises(DependencyUnavailableError):
        writer.commit()
    writer.abort()
    assert len(s3.named("abort_multipart_upload")) == 1
    assert s3.named("complete_multipart_upload") == []


def test_abort_waits_for_the_part_still_uploading() -> None:
    s3 = SlowS3(parts=1)
    writer = _writer(s3)
    writer.write(bytes(PART))
    assert s3.started[1].wait(10)
    aborting = threading.Thread(target=writer.abort)
    aborting.start()
    s3.go[1].set()
    aborting.join(10)
    assert s3.log == ["end 1", "abort"]


def test_with_none_in_flight_each_part_uploads_in_the_callers_thread() -> None:
    s3 = RecordingS3()
    callers: list[str] = []
    upload = s3.upload_part
    s3.upload_part = lambda **kw: callers.append(threading.current_thread().name) or upload(**kw)  # type: ignore[method-assign]
    writer = MultipartWriter(s3, "bucket", "k", "application/x-npy", PART, in_flight=0)
    writer.write(bytes(PART * 2))
    assert callers == [threading.current_thread().name] * 2  # sent before write returned
    writer.commit()
