"""JobRunner on in-memory stores with the real digits model: .npy in -> .npy out is
onnxruntime's output bit for bit, unsupported outputs and bad inputs fail the job with a
precise reason, and no input makes the runner raise or retry."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest

from async_worker.runner import JobRunner, ModelCache, Outcome, RunnerConfig
from async_worker.worker import QueueConfig, Worker
from gateway.jobs import Job, JobStatus
from gateway.notifications import Notification
from infergw.demo.models import build_digits, digits_split
from model_runtime.streaming import NDJSON, NPY
from tests.fakes import InMemoryJobStore

MODEL_KEY = "models/digits/1/model.onnx"
BATCH = 64


# -- in-memory stores, with the real adapters' contracts ---------------------------------
class MemoryJobs(InMemoryJobStore):
    """The JobStore fake, also keeping every update's fields (progress writes)."""

    def __init__(self) -> None:
        super().__init__()
        self.updates: list[dict[str, object]] = []

    def update(self, job: Job, **updates: object) -> Job | None:
        self.updates.append(updates)
        return super().update(job, **updates)


class MemoryWriter:
    def __init__(self, store: MemoryObjects, key: str, content_type: str) -> None:
        self._store, self._key, self._type = store, key, content_type
        self._parts: list[bytes] = []

    def write(self, data: bytes | memoryview) -> None:
        self._parts.append(bytes(data))  # a view is the caller's: copied, as S3's writer does
        self._store.writes.append(len(data))

    def commit(self) -> None:
        self._store.put(self._key, b"".join(self._parts), self._type)

    def abort(self) -> None:
        self._store.aborted.append(self._key)
        self._parts.clear()


class MemoryObjects:
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.aborted: list[str] = []
        self.writes: list[int] = []  # the size of every write to an object writer
        self.opened: list[io.BytesIO] = []

    def size(self, key: str) -> int | None:
        return len(self.objects[key][0]) if key in self.objects else None

    def open(self, key: str) -> io.BytesIO:
        stream = io.BytesIO(self.objects[key][0])
        self.opened.append(stream)
        return stream

    def writer(self, key: str, content_type: str) -> MemoryWriter:
        return MemoryWriter(self, key, content_type)

    def put(self, key: str, body: bytes, content_type: str) -> None:
        self.objects[key] = (body, content_type)

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)


class MemoryNotifier:
    def __init__(self) -> None:
        self.sent: list[Notification] = []

    def publish(self, notification: Notification) -> None:
        self.sent.append(notification)


# -- fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx() -> bytes:
    return build_digits().onnx


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.ascontiguousarray(digits_split().x_test[:300], dtype=np.float32)


@pytest.fixture(scope="module")
def models(onnx: bytes) -> ModelCache:
    objects = MemoryObjects()
    objects.put(MODEL_KEY, onnx, "application/octet-stream")
    return ModelCache(objects)


class World:
    def __init__(self, onnx: bytes, models: ModelCache, read_ahead: int = 2) -> None:
        self.jobs = MemoryJobs()
        self.objects = MemoryObjects()
        self.objects.put(MODEL_KEY, onnx, "application/octet-stream")
        self.notifier = MemoryNotifier()
        self.runner = JobRunner(
            RunnerConfig(
                worker_id="w1", region="us-east-1", batch_rows=BATCH, read_ahead=read_ahead
            ),
            self.jobs,  # type: ignore[arg-type]
            self.objects,
            models,
            self.notifier,
            bucket="bucket",
        )
        self._n = 0

    def submit(self, body: bytes, content_type: str, accept: str) -> Job:
        self._n += 1
        job = Job(
            job_id=f"job_{self._n:04x}",
            tenant="demo",
            model="digits",
            version="1",
            status=JobStatus.QUEUED,
            created_at=1.0,
            content_type=content_type,
            accept=accept,
        )
        self.jobs.create(job)
        self.objects.put(job.input_key, body, content_type)
        return job

    def run(self, body: bytes, content_type: str, accept: str) -> tuple[Outcome, Job]:
        job = self.submit(body, content_type, accept)
        outcome = self.runner.handle(job.job_id, receive_count=1, max_receives=3)
        finished = self.jobs.get(job.job_id)
        assert finished is not None
        return outcome, finished

    def output(self, job: Job) -> tuple[bytes, str]:
        return self.objects.objects[job.output_key]


@pytest.fixture(params=[2, 0], ids=["read-ahead", "in-line"])
def world(onnx: bytes, models: ModelCache, request: pytest.FixtureRequest) -> Iterator[World]:
    """Every job is run with the input read ahead in a thread (the default) and in line."""
    yield World(onnx, models, read_ahead=request.param)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def ndjson(array: np.ndarray) -> bytes:
    return "\n".join(json.dumps(r) for r in array.tolist()).encode()


def onnxruntime_outputs(onnx: bytes, x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """onnxruntime alone, in a session set up as OnnxModel's, over the same batches."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(onnx, sess_options=options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    runs = [session.run(None, {"X": x[s : s + batch]}) for s in range(0, len(x), batch)]
    return {name: np.concatenate([r[i] for r in runs]) for i, name in enumerate(names)}


# -- .npy end to end through the runner --------------------------------------------------
@pytest.mark.parametrize("content_type", [NPY, NDJSON, "text/csv", "application/json"])
def test_npy_output_is_onnxruntime_bit_for_bit(
    world: World, onnx: bytes, x: np.ndarray, content_type: str
) -> None:
    bodies = {
        NPY: npy(x),
        NDJSON: ndjson(x),
        "text/csv": "\n".join(",".join(repr(v) for v in r) for r in x.tolist()).encode(),
        "application/json": json.dumps({"inputs": x.tolist()}).encode(),
    }
    outcome, job = world.run(bodies[content_type], content_type, NPY)
    assert outcome is Outcome.DONE
    assert job.status is JobStatus.COMPLETED, job.failure_reason
    assert (job.records_done, job.records_total) == (300, 300)
    body, stored_type = world.output(job)
    assert stored_type == NPY
    got = np.load(io.BytesIO(body), allow_pickle=False)
    want = onnxruntime_outputs(onnx, x, BATCH)["probabilities"]
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape == (300, 10)
    assert got.tobytes() == want.tobytes()
    [note] = world.notifier.sent
    assert note.message["responseParameters"]["contentType"] == NPY
    assert all(s.closed for s in world.objects.opened)


def test_npy_in_npy_out_streams_batch_by_batch(world: World, x: np.ndarray) -> None:
    """The row count is in the input's header, so the output's header goes out with the
    first batch and nothing is held back (a text input's output is spooled instead)."""
    world.run(npy(x), NPY, NPY)
    row = 10 * 4  # ten float32 probabilities
    assert world.objects.writes == [128 + 64 * row, 64 * row, 64 * row, 64 * row, 44 * row]
    world.objects.writes.clear()
    world.run(ndjson(x), NDJSON, NPY)
    assert world.objects.writes == [128, 300 * row]  # from the spool, at the end


def test_npy_output_of_labels(world: World, onnx: bytes, x: np.ndarray) -> None:
    _, job = world.run(npy(x), NPY, "application/x-npy; output=label")
    got = np.load(io.BytesIO(world.output(job)[0]))
    want = onnxruntime_outputs(onnx, x, BATCH)["label"]
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


def test_float64_npy_input_is_converted_once(world: World, onnx: bytes, x: np.ndarray) -> None:
    _, job = world.run(npy(x.astype(np.float64)), NPY, NPY)
    got = np.load(io.BytesIO(world.output(job)[0]))
    assert got.tobytes() == onnxruntime_outputs(onnx, x, BATCH)["probabilities"].tobytes()


@pytest.mark.parametrize("content_type", [NPY, NDJSON])
def test_an_input_of_no_rows_gives_an_empty_but_loadable_npy(
    world: World, content_type: str
) -> None:
    body = npy(np.zeros((0, 64), np.float32)) if content_type == NPY else b"\n"
    _, job = world.run(body, content_type, NPY)
    assert job.status is JobStatus.COMPLETED, job.failure_reason
    got = np.load(io.BytesIO(world.output(job)[0]))
    assert got.shape == (0, 10) and got.dtype == np.float32


def test_progress_of_an_npy_input_knows_the_total(
    world: World, x: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.runner.config.progress_every_s = 0.0  # report after every batch
    _, job = world.run(npy(x), NPY, NPY)
    assert job.status is JobStatus.COMPLETED
    progress = [u for u in world.jobs.updates if "records_done" in u]
    assert [u["records_done"] for u in progress] == [64, 128, 192, 256, 300]
    assert {u["records_total"] for u in progress} == {300}


def test_text_outputs_are_unchanged(world: World, onnx: bytes, x: np.ndarray) -> None:
    labels = onnxruntime_outputs(onnx, x, BATCH)["label"].tolist()
    _, job = world.run(npy(x), NPY, NDJSON)
    lines = world.output(job)[0].decode().splitlines()
    assert [json.loads(line)["label"] for line in lines] == labels
    _, job = world.run(npy(x), NPY, "application/json")
    assert [p["label"] for p in json.loads(world.output(job)[0])["predictions"]] == labels


# -- refusals and failures ---------------------------------------------------------------
def assert_failed(world: World, outcome: Outcome, job: Job, reason: str) -> None:
    assert outcome is Outcome.DONE  # not retried: the input's fault
    assert job.status is JobStatus.FAILED
    assert job.failure_reason == reason
    assert job.output_key not in world.objects.objects  # no partial output survives
    error = json.loads(world.objects.objects[job.error_key][0])
    assert error["reason"] == reason
    assert world.notifier.sent[-1].message["failureReason"] == reason


def test_an_output_the_model_lacks_fails_the_job_naming_its_outputs(
    world: World, x: np.ndarray
) -> None:
    outcome, job = world.run(npy(x), NPY, "application/x-npy; output=scores")
    assert_failed(
        world,
        outcome,
        job,
        "The model has no output 'scores' to write as application/x-npy; its outputs: "
        "label, probabilities.",
    )


@pytest.mark.parametrize("content_type", [NPY, NDJSON])
def test_truncated_input_fails_the_job_naming_the_row(
    world: World, x: np.ndarray, content_type: str
) -> None:
    if content_type == NPY:
        body = npy(x)[: -(x.nbytes - 130 * 256 - 10)]  # 10 bytes into row 131
        outcome, job = world.run(body, content_type, NPY)
        assert_failed(world, outcome, job, "The .npy data ends early, at row 131 of 300.")
    else:
        body = ndjson(x)
        body = body[: body.index(b"\n", len(body) // 2) - 3]  # the last row cut short
        row = body.count(b"\n") + 1
        outcome, job = world.run(body, content_type, NPY)
        assert job.failure_reason is not None
        assert job.failure_reason.startswith(f"Row {row} "), job.failure_reason
        assert_failed(world, outcome, job, job.failure_reason)


def test_nan_in_npy_input_fails_the_job_naming_the_row(world: World, x: np.ndarray) -> None:
    bad = x.copy()
    bad[257, 5] = np.nan
    outcome, job = world.run(npy(bad), NPY, NPY)
    assert_failed(world, outcome, job, "Row 258 contains NaN or infinity.")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_infinity_in_the_last_row_of_the_last_batch_fails_the_job(
    world: World, x: np.ndarray, dtype: type
) -> None:
    bad = x.astype(dtype)
    bad[-1, -1] = -np.inf
    outcome, job = world.run(npy(bad), NPY, NPY)
    assert_failed(world, outcome, job, "Row 300 contains NaN or infinity.")


def test_large_finite_inputs_complete_bit_for_bit(world: World, onnx: bytes, x: np.ndarray) -> None:
    """Finite values whose sum overflows float32 are not mistaken for infinities."""
    big = x * np.float32(1e37)
    outcome, job = world.run(npy(big), NPY, NPY)
    assert outcome is Outcome.DONE
    assert job.status is JobStatus.COMPLETED, job.failure_reason
    got = np.load(io.BytesIO(world.output(job)[0]))
    assert got.tobytes() == onnxruntime_outputs(onnx, big, BATCH)["probabilities"].tobytes()


def test_an_unknown_input_content_type_fails_with_a_415(world: World, x: np.ndarray) -> None:
    outcome, job = world.run(npy(x), "application/x-parquet", NPY)
    assert_failed(world, outcome, job, "Content-Type 'application/x-parquet' is not supported.")


def test_no_input_crashes_or_retries_the_runner(world: World, x: np.ndarray) -> None:
    """Truncated and byte-flipped inputs of every content type, with every output type:
    each job ends COMPLETED or FAILED with a reason, at once, never a retry or a raise."""
    rng = random.Random(99)
    small = x[:40]
    bodies = {
        NPY: npy(small),
        NDJSON: ndjson(small),
        "text/csv": "\n".join(",".join(map(str, r)) for r in small.tolist()).encode(),
        "application/json": json.dumps({"inputs": small.tolist()}).encode(),
    }
    seen = {JobStatus.COMPLETED: 0, JobStatus.FAILED: 0}
    for content_type, body in bodies.items():
        for i in range(40):
            mangled = bytearray(body)
            if i % 2:
                del mangled[rng.randrange(len(mangled)) :]
            for _ in range(rng.randrange(0, 4)):
                if mangled:
                    mangled[rng.randrange(min(len(mangled), 200))] = rng.randrange(256)
            accept = rng.choice([NPY, NDJSON, "text/csv", "application/json"])
            outcome, job = world.run(bytes(mangled), content_type, accept)
            assert outcome is Outcome.DONE, (content_type, accept, job)
            assert job.status in seen, job
            seen[job.status] += 1
            if job.status is JobStatus.FAILED:
                assert job.failure_reason and not job.failure_reason.startswith("Gave up")
                assert job.output_key not in world.objects.objects
    assert seen[JobStatus.FAILED] > 40 and seen[JobStatus.COMPLETED] > 10, seen


# -- notifications ------------------------------------------------------------------------
class DyingNotifier(MemoryNotifier):
    """Publishes, then the worker 'dies' before the job is marked notified."""

    def publish(self, notification: Notification) -> None:
        super().publish(notification)
        if len(self.sent) == 1:
            raise SystemExit("killed between publishing and marking")


def test_a_notification_resent_after_a_crash_is_the_same_message(
    world: World, x: np.ndarray
) -> None:
    world.runner._notifier = world.notifier = DyingNotifier()  # type: ignore[assignment]
    job = world.submit(npy(x[:5]), NPY, NPY)
    with pytest.raises(SystemExit):
        world.runner.handle(job.job_id, receive_count=1, max_receives=3)
    crashed = world.jobs.get(job.job_id)
    assert crashed is not None and crashed.status is JobStatus.COMPLETED
    assert not crashed.notified

    # The job message's next delivery finds the job finished but not notified.
    assert world.runner.handle(job.job_id, receive_count=2, max_receives=3) is Outcome.DONE
    first, again = world.notifier.sent
    assert again == first  # same body and the same deduplication id: a FIFO topic drops it
    assert first.dedup_id == job.job_id
    assert first.message["responseParameters"]["contentType"] == NPY
    notified = world.jobs.get(job.job_id)
    assert notified is not None and notified.notified
    # Later deliveries send nothing more.
    world.runner.handle(job.job_id, receive_count=3, max_receives=3)
    assert len(world.notifier.sent) == 2


class DeadLetters:
    """A dead-letter queue holding one message per job id given."""

    def __init__(self, *job_ids: str) -> None:
        self.messages = [{"Body": json.dumps({"job_id": j})} for j in job_ids]

    def receive_message(self, **_: object) -> dict[str, object]:
        return {"Messages": self.messages}


def test_a_dead_letter_of_a_finished_but_unnotified_job_sends_its_notification(
    world: World, x: np.ndarray
) -> None:
    """Killed between finishing and notifying on the message's last delivery: the message
    goes to the dead-letter queue, and draining it still sends the one notification."""
    world.runner._notifier = world.notifier = DyingNotifier()  # type: ignore[assignment]
    job = world.submit(npy(x[:5]), NPY, NPY)
    with pytest.raises(SystemExit):
        world.runner.handle(job.job_id, receive_count=3, max_receives=3)
    worker = Worker(world.runner, DeadLetters(job.job_id), world.jobs, QueueConfig("q", "dlq"))  # type: ignore[arg-type]

    worker.drain_dead_letters()
    worker.drain_dead_letters()  # seen again after its visibility: nothing more
    assert [n.dedup_id for n in world.notifier.sent] == [job.job_id, job.job_id]
    done = world.jobs.get(job.job_id)
    assert done is not None and done.status is JobStatus.COMPLETED and done.notified


class DyingBeforeCompletion(MemoryJobs):
    """Killed after the output is committed, before the completion is recorded."""

    def transition(self, job: Job, to: JobStatus, **updates: object) -> Job | None:
        if to is JobStatus.COMPLETED:
            raise SystemExit("killed between committing the output and completing")
        return super().transition(job, to, **updates)


def test_a_dead_letter_of_a_job_killed_before_completing_leaves_no_output(
    world: World, x: np.ndarray
) -> None:
    """The output was committed but the job never recorded COMPLETED, on the message's last
    delivery: draining the dead letter fails the job, and only a COMPLETED job has an output."""
    dying = DyingBeforeCompletion()
    dying.jobs = world.jobs.jobs
    world.runner._jobs = dying
    job = world.submit(npy(x[:5]), NPY, NPY)
    with pytest.raises(SystemExit):
        world.runner.handle(job.job_id, receive_count=3, max_receives=3)
    assert job.output_key in world.objects.objects
    worker = Worker(world.runner, DeadLetters(job.job_id), dying, QueueConfig("q", "dlq"))  # type: ignore[arg-type]

    worker.drain_dead_letters()
    failed = dying.get(job.job_id)
    assert failed is not None and failed.status is JobStatus.FAILED and failed.failure_reason
    assert job.output_key not in world.objects.objects
    assert job.error_key in world.objects.objects
    assert [n.message["invocationStatus"] for n in world.notifier.sent] == ["Failed"]


class FailedByASweepOnCommit(MemoryObjects):
    """The job is failed elsewhere (its lease lapsed, a sweep drained its dead letter) just
    before this worker commits its output."""

    def __init__(self, world: World) -> None:
        super().__init__()
        self.objects = world.objects.objects
        self._world = world

    def writer(self, key: str, content_type: str) -> MemoryWriter:
        sweep, world = self, self._world

        class Writer(MemoryWriter):
            def commit(self) -> None:
                job_id = key.split("/")[-2]
                current = world.jobs.get(job_id)
                assert current is not None
                world.runner.fail_dead_letter(current)
                super().commit()

        return Writer(sweep, key, content_type)


def test_a_worker_whose_job_failed_while_it_ran_deletes_its_output(
    world: World, x: np.ndarray
) -> None:
    world.runner._objects = world.objects = FailedByASweepOnCommit(world)
    job = world.submit(npy(x[:5]), NPY, NPY)

    assert world.runner.handle(job.job_id, receive_count=1, max_receives=3) is Outcome.DONE
    failed = world.jobs.get(job.job_id)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert job.output_key not in world.objects.objects
    assert [n.message["invocationStatus"] for n in world.notifier.sent] == ["Failed"]
