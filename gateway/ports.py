"""What the core needs from the outside world. Adapters implement these; tests fake them."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, BinaryIO, Protocol

from gateway.values import ApiKeyRecord, BackendReply

if TYPE_CHECKING:  # pydantic is imported only where policies are (not by the authorizer)
    from gateway.jobs import Job, JobStatus
    from gateway.models import EndpointTarget, ModelPolicy
    from gateway.notifications import Notification
    from gateway.ratelimit import Grant, Limit


class PolicyStore(Protocol):
    def get(self, model: str) -> ModelPolicy | None: ...

    def list(self) -> list[ModelPolicy]: ...

    def put(self, policy: ModelPolicy) -> ModelPolicy:
        """Store ``policy`` if the stored revision still equals ``policy.revision`` (0: must
        not exist yet); returns it with the next revision, or raises ConflictError."""

    def delete(self, model: str) -> None: ...


class KeyStore(Protocol):
    def get(self, key_digest: str) -> ApiKeyRecord | None: ...

    def put(self, record: ApiKeyRecord) -> None: ...

    def find(self, key_id: str) -> ApiKeyRecord | None: ...

    def list(self, tenant: str | None = None) -> list[ApiKeyRecord]: ...


class EndpointInvoker(Protocol):
    """Invokes a synchronous model endpoint. Raises ``BackendError``,
    ``BackendUnavailableError``, ``BackendTimeoutError`` or ``SchemaMismatchError``."""

    def invoke(
        self,
        target: EndpointTarget,
        body: bytes,
        content_type: str,
        accept: str,
        timeout_s: float,
    ) -> BackendReply: ...


class AsyncEndpointInvoker(Protocol):
    """``EndpointInvoker`` for an event loop (the container front end)."""

    async def invoke(
        self,
        target: EndpointTarget,
        body: bytes,
        content_type: str,
        accept: str,
        timeout_s: float,
    ) -> BackendReply: ...


class LimitStore(Protocol):
    """Shared token buckets. ``lease`` atomically takes up to ``want`` tokens from the
    bucket of ``limit`` (creating it full) and reports what is left."""

    def lease(self, limit: Limit, want: int, now: float) -> Grant: ...


class UsageStore(Protocol):
    def add(self, counts: dict[tuple[str, str, str], tuple[int, int]]) -> None:
        """Add (requests, errors) to each (tenant, day, model) counter, in order. On failure
        raise DependencyUnavailableError with ``written``: how many were added."""

    def query(self, tenant: str, since_day: str | None = None) -> list[dict[str, object]]: ...


class JobStore(Protocol):
    def create(self, job: Job) -> None:
        """Store a new job; ConflictError if the id exists."""

    def get(self, job_id: str) -> Job | None: ...

    def transition(self, job: Job, to: JobStatus, **updates: object) -> Job | None:
        """Move ``job`` to ``to`` only if the stored job is still in ``job.status`` (and,
        for a leased job, still under ``job.lease_owner``); returns the stored job, or None
        when the condition failed."""

    def update(self, job: Job, **updates: object) -> Job | None:
        """Change fields of a job still in its status under the same lease."""

    def list_for_tenant(self, tenant: str, limit: int) -> list[Job]: ...

    def find_by_idempotency_key(self, tenant: str, key: str) -> Job | None: ...

    def pending_uploads(self, expired_before: float) -> list[Job]: ...

    def recent(self, limit: int) -> list[Job]: ...


class PayloadStore(Protocol):
    def put(self, key: str, body: bytes, content_type: str) -> None: ...

    def presign_upload(
        self, key: str, max_bytes: int, content_type: str, expires_s: int
    ) -> dict[str, object]: ...

    def presign_download(self, key: str, expires_s: int) -> str: ...


class Notifier(Protocol):
    def publish(self, notification: Notification) -> None: ...


class ObjectStore(Protocol):
    """Streaming access to job objects for the worker."""

    def size(self, key: str) -> int | None: ...

    def open(self, key: str) -> BinaryIO: ...

    def writer(self, key: str, content_type: str) -> ObjectWriter: ...

    def put(self, key: str, body: bytes, content_type: str) -> None: ...

    def delete(self, key: str) -> None: ...


class ObjectWriter(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...  # a view is copied before return

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class Spans(Protocol):
    """Tracing: a named span around a step (auth, limit, route, backend)."""

    def span(self, name: str) -> AbstractContextManager[object]: ...


class NoSpans:
    """Spans that trace nothing: the default."""

    def span(self, name: str) -> AbstractContextManager[object]:
        return nullcontext()
