"""The gateway's use cases: one core called by every front end (Lambda, local HTTP)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway import payload, routing
from gateway.admission import Admission, Ticket
from gateway.auth import require_scope
from gateway.dispatch import Attempt, Dispatcher
from gateway.errors import (
    BackendUnavailableError,
    DependencyUnavailableError,
    GatewayError,
    ModelNotFoundError,
)
from gateway.live import LiveState
from gateway.metrics import RequestMetrics
from gateway.models import ModelPolicy, ModelSummary
from gateway.ports import EndpointInvoker, NoSpans, PolicyStore, Spans, UsageStore
from gateway.usage import UsageRecorder
from gateway.values import (
    Backend,
    InvocationOutcome,
    InvocationRequest,
    Principal,
    RouteDecision,
    Scope,
)

if TYPE_CHECKING:  # built on the first job (functions.bootstrap), not at a cold start
    from gateway.jobs import JobService

# How long a cached policy or a rate-limit lease must still last for an event loop to count
# on it: one that expires between the check and ``begin`` would make the loop wait after all.
LOOKAHEAD_S = 0.05


class CachedPolicyStore:
    """Keeps policies in process memory for ``ttl_s``: a changed policy is in effect
    everywhere within that time, and the hot path pays no store round trip."""

    def __init__(
        self,
        inner: PolicyStore,
        ttl_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        stale_s: float = 300.0,
        refresh_ahead: Executor | None = None,
    ) -> None:
        self._inner = inner
        self._stale_s = stale_s
        self._ttl = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, ModelPolicy | None]] = {}
        self._all: tuple[float, list[ModelPolicy]] | None = None
        # With an executor, a policy in its last quarter of life is re-read in the
        # background, so a busy model never waits on the store (an event loop never blocks).
        self._refresh_ahead = refresh_ahead
        self._refreshing: set[str] = set()

    def get(self, model: str) -> ModelPolicy | None:
        now = self._clock()
        hit = self._entries.get(model)
        if hit is not None and hit[0] > now:
            if (
                self._refresh_ahead is not None
                and hit[0] - now < self._ttl / 4
                and model not in self._refreshing
            ):
                self._refreshing.add(model)
                self._refresh_ahead.submit(self._refresh, model)
            return hit[1]
        try:
            policy = self._inner.get(model)
        except DependencyUnavailableError:
            # The store is away: the last known policy keeps serving for a while (a change
            # made meanwhile waits for the store), rather than failing every request.
            if hit is not None and now - hit[0] < self._stale_s:
                return hit[1]
            raise
        self._remember(model, policy)
        return policy

    def _refresh(self, model: str) -> None:
        try:
            policy = self._inner.get(model)
        except Exception:  # the request path reads it itself once the entry expires
            return
        finally:
            self._refreshing.discard(model)
        known = self._entries.get(model, (0.0, None))[1]
        if known is not None and policy is not None and policy.revision < known.revision:
            return  # read before a put through this cache landed: keep the newer one
        self._remember(model, policy)

    def _remember(self, model: str, policy: ModelPolicy | None) -> None:
        if len(self._entries) > 10_000:  # unknown model names must not grow memory forever
            self._entries.clear()
        self._entries[model] = (self._clock() + self._ttl, policy)

    def cached(self, model: str, margin_s: float) -> tuple[bool, ModelPolicy | None]:
        """(True, the policy or None for no such model) when ``get`` would answer from
        memory for at least ``margin_s`` more; (False, None) when it would read the store."""
        hit = self._entries.get(model)
        if hit is None or hit[0] <= self._clock() + margin_s:
            return False, None
        return True, hit[1]

    def list(self) -> list[ModelPolicy]:
        now = self._clock()
        if self._all is not None and self._all[0] > now:
            return self._all[1]
        policies = self._inner.list()
        self._all = (now + self._ttl, policies)
        return policies

    def put(self, policy: ModelPolicy) -> ModelPolicy:
        stored = self._inner.put(policy)
        self._entries[stored.model] = (self._clock() + self._ttl, stored)
        self._all = None
        return stored

    def delete(self, model: str) -> None:
        self._inner.delete(model)
        self._entries.pop(model, None)
        self._all = None


@dataclass
class Invocation:
    """One invocation between admission and answer: what the backend call needs (the plan,
    its targets, the media type, the deadlines) and what ending it needs (the ticket)."""

    principal: Principal
    policy: ModelPolicy
    request: InvocationRequest
    ticket: Ticket
    clock: tuple[float, float, float]  # started, limited, routed
    steps: list[RouteDecision]
    targets: routing.Targets
    media: str
    timeout_ms: float
    deadline: float  # on the live state's clock: give up here
    budget_end: float  # no fallback that would end after this


class Gateway:
    def __init__(
        self,
        policies: PolicyStore,
        invoker: EndpointInvoker,
        admission: Admission | None = None,
        usage: UsageRecorder | None = None,
        usage_store: UsageStore | None = None,
        jobs: JobService | None = None,
        live: LiveState | None = None,
        dispatcher: Dispatcher | None = None,
        spans: Spans | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._spans = spans or NoSpans()
        self._policies = policies
        self._admission = admission
        self._usage = usage
        self._usage_store = usage_store
        self.jobs = jobs
        self.live = live or LiveState()
        self.dispatcher = dispatcher or Dispatcher(invoker, self.live)
        self._clock = clock
        self.metrics = RequestMetrics()

    def list_models(self, principal: Principal) -> list[ModelSummary]:
        return [
            ModelSummary.of(p)
            for p in sorted(self._policies.list(), key=lambda p: p.model)
            if p.visible_to(principal.tenant) and principal.may_use(p.model)
        ]

    def get_model(self, principal: Principal, model: str) -> ModelSummary:
        return ModelSummary.of(self.policy_for(principal, model))

    def usage(
        self, principal: Principal, tenant: str | None = None, since_day: str | None = None
    ) -> list[dict[str, object]]:
        """A tenant's usage per day and model. Only admins may name another tenant."""
        if tenant is not None and tenant != principal.tenant:
            require_scope(principal, Scope.ADMIN)
        if self._usage_store is None:
            return []
        if self._usage is not None:
            self._usage.flush()  # what this instance counted so far is part of the answer
        return self._usage_store.query(tenant or principal.tenant, since_day)

    def invoke(self, principal: Principal, request: InvocationRequest) -> InvocationOutcome:
        call = self.begin(principal, request)
        try:
            with self._spans.span("backend"):
                attempt = self.dispatcher.call_sync(
                    call.steps,
                    call.targets,
                    request.body,
                    call.media,
                    request.accept,
                    call.deadline,
                    call.budget_end,
                )
        except BaseException:
            self.abandon(call)
            raise
        return self.finish(call, attempt)

    def begins_without_waiting(self, principal: Principal, model: str) -> bool:
        """Whether ``begin`` would answer without a store round trip: the model's policy is
        cached and each of the caller's limits has a local lease (or a denial in force).
        An event loop runs ``begin`` inline when it would, in a thread when not: a cold
        policy or an expired lease must not stall every other request on the loop. A
        policy store without a cache (in memory) never waits."""
        if not isinstance(self._policies, CachedPolicyStore):
            return True
        known, policy = self._policies.cached(model, LOOKAHEAD_S)
        if not known:
            return False
        if policy is None or self._admission is None:
            return True  # no such model (a 404 from memory), or no limits to lease
        return self._admission.answers_locally(principal, policy, LOOKAHEAD_S)

    def begin(self, principal: Principal, request: InvocationRequest) -> Invocation:
        """Authorize, admit and plan one invocation. Every call begun is ended by exactly
        one of :meth:`finish` (with the backend's attempt) or :meth:`abandon`."""
        started = self._clock()
        require_scope(principal, Scope.INVOKE)
        policy = self.policy_for(principal, request.model)
        try:
            with self._spans.span("limit"):
                ticket = self._admission.admit(principal, policy) if self._admission else Ticket({})
        except GatewayError as error:
            self.metrics.record(policy.model, "limited", error.status, 0.0)
            raise
        limited = self._clock()
        try:
            with self._spans.span("route"):
                steps, targets, media = self._plan(principal, policy, request)
        except BaseException as error:
            self._close(principal, policy, ticket, started, error)
            raise
        routed = self._clock()
        budget_ms, timeout_ms = routing.budgets(policy, request.hints)
        now, elapsed_s = self.live.now(), routed - started
        return Invocation(
            principal,
            policy,
            request,
            ticket,
            (started, limited, routed),
            steps,
            targets,
            media,
            timeout_ms,
            deadline=now + timeout_ms / 1000 - elapsed_s,
            budget_end=now + budget_ms / 1000 - elapsed_s,
        )

    def finish(self, call: Invocation, attempt: Attempt) -> InvocationOutcome:
        """The answer to a begun call, given what its backend call came to. Blocking I/O
        (a job's input to the store) when the plan ended in the async backend."""
        started, limited, routed = call.clock
        timings = {
            "limit": (limited - started) * 1000,
            "route": (routed - limited) * 1000,
            "backend": (self._clock() - routed) * 1000,
        }
        try:
            outcome = self._answer(call, attempt, timings)
        except BaseException as error:
            self._end(call, error)
            raise
        self._end(call, outcome)
        return outcome

    def abandon(self, call: Invocation) -> None:
        """End a begun call that will not be finished (its caller was cancelled)."""
        self._end(call, None)

    def _end(self, call: Invocation, result: InvocationOutcome | BaseException | None) -> None:
        self._close(call.principal, call.policy, call.ticket, call.clock[0], result)

    def _close(
        self,
        principal: Principal,
        policy: ModelPolicy,
        ticket: Ticket,
        started: float,
        result: InvocationOutcome | BaseException | None,
    ) -> None:
        ticket.release()
        if isinstance(result, InvocationOutcome):
            route, status = result.decision.backend.value, result.status
            result.headers.update(ticket.headers)
        elif isinstance(result, GatewayError):
            route, status = "none", result.status
            result.headers = {**ticket.headers, **result.headers}
        else:
            route, status = "none", 500
        self.metrics.record(policy.model, route, status, (self._clock() - started) * 1000)
        if self._usage is not None:
            self._usage.record(principal.tenant, policy.model, route != "none")

    def _plan(
        self, principal: Principal, policy: ModelPolicy, request: InvocationRequest
    ) -> tuple[list[RouteDecision], routing.Targets, str]:
        hints = request.hints
        variant = routing.pick_variant(
            policy, hints.sticky_key or principal.key_id, hints.target_variant
        )
        targets = routing.targets_for(policy, variant)
        budget_ms, _ = routing.budgets(policy, hints)
        facts = routing.RequestFacts(len(request.body), budget_ms, hints.prefer_async)
        views = {
            backend: self.live.view(target)
            for backend in routing.SYNC_ORDER
            if (target := targets.of(backend)) is not None
        }
        steps = routing.plan(facts, policy, targets, views)
        media = payload.media_type(request.content_type)
        if steps[0].backend is not Backend.ASYNC:
            # Reject bad input before it costs a backend call.
            payload.check_schema(payload.decode(request.body, media), policy.input)
        return steps, targets, media

    def _answer(
        self, call: Invocation, attempt: Attempt, timings: dict[str, float]
    ) -> InvocationOutcome:
        policy, request, targets, media = call.policy, call.request, call.targets, call.media
        decision = attempt.decision
        if decision.backend is Backend.ASYNC:
            return self._enqueue(call.principal, policy, request, media, targets, decision, timings)
        if attempt.error is not None or attempt.reply is None:
            raise attempt.error or BackendUnavailableError(
                f"No backend of '{policy.model}' answered in time.", retry_after_s=1
            )
        if attempt.reply.cold_start_ms is not None:
            timings["cold-start"] = attempt.reply.cold_start_ms
        if policy.shadow is not None:
            # The shadow's own endpoints only: mirroring to the primary's proves nothing.
            shadow = routing.Targets(
                policy.shadow.name,
                policy.shadow.version,
                policy.shadow.realtime,
                policy.shadow.serverless,
            )
            self.dispatcher.mirror(
                policy.model,
                shadow,
                request.body,
                media,
                request.accept,
                attempt.reply.body,
                timeout_s=call.timeout_ms / 1000,
            )
        return InvocationOutcome(
            status=200,
            body=attempt.reply.body,
            content_type=attempt.reply.content_type,
            decision=decision,
            model_version=targets.version,
            timings_ms=timings,
        )

    def _enqueue(
        self,
        principal: Principal,
        policy: ModelPolicy,
        request: InvocationRequest,
        media: str,
        targets: routing.Targets,
        decision: RouteDecision,
        timings: dict[str, float],
    ) -> InvocationOutcome:
        if self.jobs is None:
            raise BackendUnavailableError("The async backend is not configured.", retry_after_s=30)
        require_scope(principal, Scope.JOBS)
        # The job's output in the form a sync call would have answered: JSON, unless the
        # client asked for NDJSON or CSV.
        accept = request.accept.split(",")[0].strip()
        if accept.split(";")[0].strip().lower() not in (
            "application/x-ndjson",
            "text/csv",
            "application/x-npy",
        ):
            accept = "application/json"
        job = self.jobs.submit_inline(
            principal,
            policy,
            request.body,
            media,
            accept,
            variant=targets.variant,
            version=targets.version,
            idempotency_key=request.hints.idempotency_key,
            correlation_id=request.correlation_id,
        )
        location = f"/v1/jobs/{job.job_id}"
        body = json.dumps(
            {
                "job_id": job.job_id,
                "status": job.status.value,
                "status_url": location,
                "model": job.model,
            }
        ).encode()
        return InvocationOutcome(
            status=202,
            body=body,
            content_type="application/json",
            decision=decision,
            model_version=targets.version,
            timings_ms=timings,
            headers={"Location": location, "Preference-Applied": "respond-async"}
            if request.hints.prefer_async
            else {"Location": location},
        )

    def policy_for(self, principal: Principal, model: str) -> ModelPolicy:
        policy = self._policies.get(model)
        # Another tenant's model is indistinguishable from a missing one: 404, never 403.
        if (
            policy is None
            or not policy.visible_to(principal.tenant)
            or not principal.may_use(model)
        ):
            raise ModelNotFoundError(f"There is no model named '{model}'.", model=model)
        return policy
