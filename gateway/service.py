"""The gateway's use cases: one core called by every front end (Lambda, local HTTP)."""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway import payload, routing
from gateway.admission import Admission, Ticket
from gateway.auth import require_scope
from gateway.errors import GatewayError, ModelNotFoundError
from gateway.models import (
    Backend,
    InvocationOutcome,
    InvocationRequest,
    ModelPolicy,
    ModelSummary,
    Principal,
    Scope,
)
from gateway.ports import EndpointInvoker, PolicyStore, UsageStore
from gateway.usage import UsageRecorder


class CachedPolicyStore:
    """Keeps policies in process memory for ``ttl_s``: a changed policy is in effect
    everywhere within that time, and the hot path pays no store round trip."""

    def __init__(
        self, inner: PolicyStore, ttl_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._inner = inner
        self._ttl = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, ModelPolicy | None]] = {}
        self._all: tuple[float, list[ModelPolicy]] | None = None

    def get(self, model: str) -> ModelPolicy | None:
        now = self._clock()
        hit = self._entries.get(model)
        if hit is not None and hit[0] > now:
            return hit[1]
        policy = self._inner.get(model)
        if len(self._entries) > 10_000:  # unknown model names must not grow memory forever
            self._entries.clear()
        self._entries[model] = (now + self._ttl, policy)
        return policy

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


class Gateway:
    def __init__(
        self,
        policies: PolicyStore,
        invoker: EndpointInvoker,
        admission: Admission | None = None,
        usage: UsageRecorder | None = None,
        usage_store: UsageStore | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._policies = policies
        self._invoker = invoker
        self._admission = admission
        self._usage = usage
        self._usage_store = usage_store
        self._clock = clock

    def list_models(self, principal: Principal) -> list[ModelSummary]:
        return [
            ModelSummary.of(p)
            for p in sorted(self._policies.list(), key=lambda p: p.model)
            if p.visible_to(principal.tenant) and principal.may_use(p.model)
        ]

    def get_model(self, principal: Principal, model: str) -> ModelSummary:
        return ModelSummary.of(self._policy_for(principal, model))

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
        started = self._clock()
        require_scope(principal, Scope.INVOKE)
        policy = self._policy_for(principal, request.model)
        ticket = self._admission.admit(principal, policy) if self._admission else Ticket({})
        limited = self._clock()
        ok = False
        try:
            outcome = self._dispatch(policy, request, limited)
            ok = True
        except GatewayError as error:
            error.headers = {**ticket.headers, **error.headers}
            raise
        finally:
            ticket.release()
            if self._usage is not None:
                self._usage.record(principal.tenant, policy.model, ok)
        outcome.headers.update(ticket.headers)
        outcome.timings_ms = {"limit": (limited - started) * 1000, **outcome.timings_ms}
        return outcome

    def _dispatch(
        self, policy: ModelPolicy, request: InvocationRequest, started: float
    ) -> InvocationOutcome:
        decision = routing.decide(len(request.body), policy, request.hints)
        decoded = payload.decode(request.body, request.content_type)
        payload.check_schema(decoded, policy.input)
        routed = self._clock()
        target = policy.realtime if decision.backend is Backend.REALTIME else policy.serverless
        assert target is not None  # routing only picks configured backends
        reply = self._invoker.invoke(
            target,
            request.body,
            payload.media_type(request.content_type),
            request.accept,
            timeout_s=policy.timeout_ms / 1000,
        )
        finished = self._clock()
        return InvocationOutcome(
            status=200,
            body=reply.body,
            content_type=reply.content_type,
            decision=decision,
            model_version=policy.version,
            timings_ms={
                "route": (routed - started) * 1000,
                "backend": (finished - routed) * 1000,
            },
        )

    def _policy_for(self, principal: Principal, model: str) -> ModelPolicy:
        policy = self._policies.get(model)
        # Another tenant's model is indistinguishable from a missing one: 404, never 403.
        if (
            policy is None
            or not policy.visible_to(principal.tenant)
            or not principal.may_use(model)
        ):
            raise ModelNotFoundError(f"There is no model named '{model}'.", model=model)
        return policy
