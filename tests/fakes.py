"""In-memory implementations of the core's ports (``gateway.ports``) for fast tests.

They keep the contracts of the real adapters (``gateway.adapters``) that the core relies on,
most importantly the optimistic concurrency of the DynamoDB policy store."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

from gateway.auth import digest_key, key_id_of, new_api_key
from gateway.errors import ConflictError, DependencyUnavailableError
from gateway.jobs import Job, JobStatus, can_move
from gateway.models import EndpointTarget, ModelPolicy
from gateway.ratelimit import BucketState, Grant, Limit, take
from gateway.values import ApiKeyRecord, BackendReply

BUCKET = "infergw-dev-artifacts-123456789012"  # what presigned URLs of the fakes name


class InMemoryPolicyStore:
    """``PolicyStore`` in a dict. ``put`` behaves like ``DynamoDBPolicyStore.put``: a policy
    read at revision 0 may only create, any other revision must match the stored one, and
    the stored copy (which ``put`` returns) carries ``revision + 1``."""

    def __init__(self, policies: Iterable[ModelPolicy] = ()) -> None:
        self._policies: dict[str, ModelPolicy] = {}
        self.get_calls: list[str] = []
        self.list_calls = 0
        for policy in policies:
            self.put(policy)

    def get(self, model: str) -> ModelPolicy | None:
        self.get_calls.append(model)
        return self._policies.get(model)

    def list(self) -> list[ModelPolicy]:
        self.list_calls += 1
        return list(self._policies.values())

    def put(self, policy: ModelPolicy) -> ModelPolicy:
        current = self._policies.get(policy.model)
        if policy.revision == 0:
            if current is not None:
                raise ConflictError(f"Policy '{policy.model}' already exists.", model=policy.model)
        elif current is None or current.revision != policy.revision:
            raise ConflictError(
                f"Policy '{policy.model}' changed since revision {policy.revision} was read.",
                model=policy.model,
            )
        stored = policy.model_copy(update={"revision": policy.revision + 1})
        self._policies[stored.model] = stored
        return stored


class InMemoryKeyStore:
    """``KeyStore`` in a dict keyed by ``key_digest``; counts reads so tests can see caching."""

    def __init__(self, records: Iterable[ApiKeyRecord] = ()) -> None:
        self._records: dict[str, ApiKeyRecord] = {r.key_digest: r for r in records}
        self.get_calls: list[str] = []

    def get(self, key_digest: str) -> ApiKeyRecord | None:
        self.get_calls.append(key_digest)
        return self._records.get(key_digest)

    def put(self, record: ApiKeyRecord) -> None:
        self._records[record.key_digest] = record


def issue_key(
    store: InMemoryKeyStore,
    tenant: str = "tenant-a",
    scopes: Iterable[str] = ("invoke",),
    *,
    tier: str = "standard",
    allowed_models: frozenset[str] | None = None,
    environment: str = "test",
) -> tuple[str, ApiKeyRecord]:
    """A fresh API key stored (as its digest) in ``store``: ``(key, record)``."""
    key = new_api_key(environment)
    digest = digest_key(key)
    record = ApiKeyRecord(
        key_digest=digest,
        key_id=key_id_of(digest),
        tenant=tenant,
        scopes=frozenset(scopes),
        tier=tier,
        allowed_models=allowed_models,
        created_at="2026-01-01T00:00:00Z",
    )
    store.put(record)
    return key, record


@dataclass(frozen=True)
class InvokeCall:
    target: EndpointTarget
    body: bytes
    content_type: str
    accept: str
    timeout_s: float


@dataclass
class RecordingInvoker:
    """``EndpointInvoker`` that records every call, then runs ``side_effect`` (if any),
    then raises ``error`` if set, else returns ``reply``."""

    reply: BackendReply = field(
        default_factory=lambda: BackendReply(b'{"outputs": [[0.5]]}', "application/json")
    )
    error: BaseException | None = None
    side_effect: Callable[[], None] | None = None
    calls: list[InvokeCall] = field(default_factory=list)

    def invoke(
        self,
        target: EndpointTarget,
        body: bytes,
        content_type: str,
        accept: str,
        timeout_s: float,
    ) -> BackendReply:
        return self._answer(InvokeCall(target, body, content_type, accept, timeout_s))

    def _answer(self, call: InvokeCall) -> BackendReply:
        self.calls.append(call)
        if self.side_effect is not None:
            self.side_effect()
        if self.error is not None:
            raise self.error
        return self.reply


class AsyncRecordingInvoker(RecordingInvoker):
    """``RecordingInvoker`` for an event loop: suspends once, then answers as it would."""

    async def invoke(  # type: ignore[override]
        self,
        target: EndpointTarget,
        body: bytes,
        content_type: str,
        accept: str,
        timeout_s: float,
    ) -> BackendReply:
        await asyncio.sleep(0)
        return self._answer(InvokeCall(target, body, content_type, accept, timeout_s))


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- Rate limits, usage and background work -------------------------------------------------


class InMemoryLimitStore:
    """``LimitStore`` on a dict of ``BucketState``, stepping each bucket with
    ``gateway.ratelimit.take`` as ``DynamoDBLimitStore`` does when its conditional write wins
    (and, like it, writing nothing when nothing is granted). Counts every ``lease`` call;
    set ``unavailable`` to make calls raise ``DependencyUnavailableError``."""

    def __init__(self) -> None:
        self.buckets: dict[str, BucketState] = {}
        self.calls = 0
        self.unavailable = False

    def lease(self, limit: Limit, want: int, now: float) -> Grant:
        self.calls += 1
        if self.unavailable:
            raise DependencyUnavailableError("The limit store is unavailable.", retry_after_s=1)
        granted, new = take(self.buckets.get(limit.key), now, limit.rate, limit.burst, want)
        if granted > 0:
            self.buckets[limit.key] = new
        return Grant(granted, new.tokens)


class InMemoryUsageStore:
    """``UsageStore`` in a dict. Like ``DynamoDBUsageStore`` it adds one counter at a time:
    ``fail_after`` = n writes n counters of the next ``add`` and then fails; ``unavailable``
    fails before writing anything."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], tuple[int, int]] = {}
        self.add_calls = 0
        self.unavailable = False
        self.fail_after: int | None = None

    def add(self, counts: dict[tuple[str, str, str], tuple[int, int]]) -> None:
        self.add_calls += 1
        if self.unavailable:
            raise DependencyUnavailableError("The usage store is unavailable.", retry_after_s=1)
        for written, (key, (requests, errors)) in enumerate(counts.items()):
            if self.fail_after is not None and written >= self.fail_after:
                self.fail_after = None
                raise DependencyUnavailableError(
                    "The usage store failed mid-batch.", written=written
                )
            old_requests, old_errors = self.counts.get(key, (0, 0))
            self.counts[key] = (old_requests + requests, old_errors + errors)

    def query(self, tenant: str, since_day: str | None = None) -> list[dict[str, object]]:
        rows = [
            {"tenant": t, "day": day, "model": model, "requests": r, "errors": e}
            for (t, day, model), (r, e) in self.counts.items()
            if t == tenant and (not since_day or f"{day}#{model}" >= since_day)
        ]
        return sorted(rows, key=lambda row: f"{row['day']}#{row['model']}")


class InlineExecutor(Executor):
    """Runs each submitted call at once, in the caller's thread, and returns its completed
    future. Not for ``LeasedLimiter``, which submits its refill while holding the bucket's
    lock (the refill would wait for that lock forever): use ``DeferredExecutor`` there."""

    def __init__(self) -> None:
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


_Job = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Future[Any]]


class DeferredExecutor(Executor):
    """Queues submitted calls until ``run_pending``, so a test decides when "background"
    work happens (in the test's thread, in submission order)."""

    def __init__(self) -> None:
        self.pending: list[_Job] = []
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        future: Future[Any] = Future()
        self.pending.append((fn, args, kwargs, future))
        return future

    def run_pending(self) -> int:
        """Run everything queued, including what that submits; returns how many ran."""
        ran = 0
        while self.pending:
            fn, args, kwargs, future = self.pending.pop(0)
            ran += 1
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)
        return ran


class FakeKeyStore(InMemoryKeyStore):
    """``InMemoryKeyStore`` with the admin side of ``KeyStore``: ``find`` by key id, ``list``."""

    def find(self, key_id: str) -> ApiKeyRecord | None:
        return next((r for r in self._records.values() if r.key_id == key_id), None)

    def list(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        return [r for r in self._records.values() if tenant is None or r.tenant == tenant]


class FakePolicyStore(InMemoryPolicyStore):
    """``InMemoryPolicyStore`` that can also ``delete``, recording what it deleted."""

    def __init__(self, policies: Iterable[ModelPolicy] = ()) -> None:
        super().__init__(policies)
        self.deleted: list[str] = []

    def delete(self, model: str) -> None:
        self.deleted.append(model)
        self._policies.pop(model, None)


# --- Router: scripted backends ----------------------------------------------------------------


@dataclass
class ScriptedInvoker:
    """``EndpointInvoker`` whose answers are scripted per endpoint name: each call records
    itself, advances ``clock`` (if given) by ``latency_s[endpoint]`` so ``LiveState`` measures
    that latency, then takes the next entry of ``script[endpoint]``: a ``BackendReply`` to
    return or an exception to raise. When an endpoint's script runs dry, ``default``
    answers (a reply, or an exception raised on every further call)."""

    script: dict[str, list[BackendReply | BaseException]] = field(default_factory=dict)
    default: BackendReply | BaseException = field(
        default_factory=lambda: BackendReply(b'{"predictions": [0]}', "application/json")
    )
    clock: FakeClock | None = None
    latency_s: dict[str, float] = field(default_factory=dict)
    calls: list[InvokeCall] = field(default_factory=list)

    def invoke(
        self,
        target: EndpointTarget,
        body: bytes,
        content_type: str,
        accept: str,
        timeout_s: float,
    ) -> BackendReply:
        self.calls.append(InvokeCall(target, body, content_type, accept, timeout_s))
        if self.clock is not None:
            self.clock.advance(self.latency_s.get(target.endpoint_name, 0.0))
        queue = self.script.get(target.endpoint_name)
        outcome = queue.pop(0) if queue else self.default
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def endpoints(self) -> list[str]:
        """The endpoint names called, in order."""
        return [call.target.endpoint_name for call in self.calls]


# --- in-memory job storage (JobStore, PayloadStore) ---------------------------------------


class InMemoryJobStore:
    """``JobStore`` in a dict, with the conditional semantics of ``DynamoDBJobStore``."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self._idempotency: dict[tuple[str, str], str] = {}

    def create(self, job: Job) -> None:
        if job.idempotency_key:
            marker = (job.tenant, job.idempotency_key)
            if marker in self._idempotency:
                raise ConflictError("A job with this Idempotency-Key exists.")
            self._idempotency[marker] = job.job_id
        if job.job_id in self.jobs:
            raise ConflictError(f"Job {job.job_id} exists.")
        self.jobs[job.job_id] = job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def transition(self, job: Job, to: JobStatus, **updates: Any) -> Job | None:
        if not can_move(job.status, to):
            return None
        return self._replace(job, dataclasses.replace(job, status=to, **updates))

    def update(self, job: Job, **updates: Any) -> Job | None:
        return self._replace(job, dataclasses.replace(job, **updates))

    def list_for_tenant(self, tenant: str, limit: int) -> list[Job]:
        mine = [j for j in self.jobs.values() if j.tenant == tenant]
        return sorted(mine, key=lambda j: j.created_at, reverse=True)[:limit]

    def find_by_idempotency_key(self, tenant: str, key: str) -> Job | None:
        job_id = self._idempotency.get((tenant, key))
        return None if job_id is None else self.jobs.get(job_id)

    def pending_uploads(self, expired_before: float) -> list[Job]:
        return [
            j
            for j in self.jobs.values()
            if j.status is JobStatus.PENDING_UPLOAD
            and j.expires_at is not None
            and j.expires_at < expired_before
        ]

    def recent(self, limit: int) -> list[Job]:
        return sorted(self.jobs.values(), key=lambda j: j.created_at, reverse=True)[:limit]

    def _replace(self, old: Job, new: Job) -> Job | None:
        current = self.jobs.get(old.job_id)
        if current is None or (current.status, current.lease_owner) != (
            old.status,
            old.lease_owner,
        ):
            return None
        self.jobs[new.job_id] = new
        return new


@dataclass
class InMemoryPayloadStore:
    """``PayloadStore``: objects in a dict, presigned URLs shaped like S3's."""

    objects: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    def put(self, key: str, body: bytes, content_type: str) -> None:
        self.objects[key] = (body, content_type)

    def presign_upload(
        self, key: str, max_bytes: int, content_type: str, expires_s: int
    ) -> dict[str, object]:
        return {
            "method": "POST",
            "url": f"https://{BUCKET}.s3.amazonaws.com/",
            "fields": {"Content-Type": content_type, "key": key, "policy": "eyJleHBpcmF0aW9u"},
            "max_bytes": max_bytes,
            "expires_in_s": expires_s,
        }

    def presign_download(self, key: str, expires_s: int) -> str:
        return f"https://{BUCKET}.s3.amazonaws.com/{key}?X-Amz-Expires={expires_s}"
