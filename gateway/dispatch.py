"""Carrying out a routing plan: call the chosen backend, fall back along the plan while the
budget lasts, keep live state and breakers current, mirror to the shadow variant."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Generator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

from gateway.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    GatewayError,
)
from gateway.live import LiveState
from gateway.models import EndpointTarget
from gateway.ports import AsyncEndpointInvoker, EndpointInvoker
from gateway.routing import Targets
from gateway.values import Backend, BackendReply, RouteDecision

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
# What a call to a backend came to: its reply, or the error it raised.
Outcome = tuple[BackendReply | None, BaseException | None]
# Failures worth another backend: the next one may well succeed. A client error is not.
RETRYABLE = (BackendUnavailableError, BackendTimeoutError, BackendError)


class InvokerByProtocol:
    """One invoker per endpoint protocol (SageMaker runtime, OIP v2 over HTTP)."""

    def __init__(self, invokers: dict[str, EndpointInvoker]) -> None:
        self._invokers = invokers

    def invoke(
        self, target: EndpointTarget, body: bytes, content_type: str, accept: str, timeout_s: float
    ) -> BackendReply:
        return self._invokers[target.protocol].invoke(target, body, content_type, accept, timeout_s)


class AsyncInvokerByProtocol:
    """InvokerByProtocol for an event loop."""

    def __init__(self, invokers: dict[str, AsyncEndpointInvoker]) -> None:
        self._invokers = invokers

    async def invoke(
        self, target: EndpointTarget, body: bytes, content_type: str, accept: str, timeout_s: float
    ) -> BackendReply:
        invoker = self._invokers[target.protocol]
        return await invoker.invoke(target, body, content_type, accept, timeout_s)


@dataclass
class Attempt:
    decision: RouteDecision
    reply: BackendReply | None = None
    error: GatewayError | None = None
    fallbacks: int = 0
    tried: list[str] = field(default_factory=list)


@dataclass
class ShadowStats:
    mirrored: int = 0
    compared: int = 0
    agreed: int = 0
    shadow_errors: int = 0
    dropped: int = 0

    def agreement(self) -> float | None:
        return None if self.compared == 0 else self.agreed / self.compared


class Dispatcher:
    def __init__(
        self,
        invoker: EndpointInvoker,
        live: LiveState,
        shadow_executor: Executor | None = None,
        max_shadow_queue: int = 64,
    ) -> None:
        self._invoker = invoker
        self.live = live
        self._shadow_executor = shadow_executor or ThreadPoolExecutor(
            2, thread_name_prefix="shadow"
        )
        self._shadow_slots = threading.BoundedSemaphore(max_shadow_queue)
        self.shadow: dict[str, ShadowStats] = {}
        self.fallbacks = 0

    def call_sync(
        self,
        plan: list[RouteDecision],
        targets: Targets,
        body: bytes,
        content_type: str,
        accept: str,
        deadline: float,
        budget_end: float,
    ) -> Attempt:
        """Try the plan's sync steps in order. Stops at the first success, at a client
        error, at an async step (returned for the caller to enqueue), or when time is up."""
        walk = self._walk(plan, targets, deadline, budget_end)
        try:
            target, remaining = next(walk)
            while True:
                try:
                    reply = self._invoker.invoke(target, body, content_type, accept, remaining)
                except Exception as exc:
                    target, remaining = walk.send((None, exc))
                else:
                    target, remaining = walk.send((reply, None))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def call_async(
        self,
        invoker: AsyncEndpointInvoker,
        plan: list[RouteDecision],
        targets: Targets,
        body: bytes,
        content_type: str,
        accept: str,
        deadline: float,
        budget_end: float,
    ) -> Attempt:
        """``call_sync`` for an event loop: the same plan walk, awaiting ``invoker``."""
        walk = self._walk(plan, targets, deadline, budget_end)
        try:
            target, remaining = next(walk)
            while True:
                try:
                    reply = await invoker.invoke(target, body, content_type, accept, remaining)
                except Exception as exc:
                    target, remaining = walk.send((None, exc))
                else:
                    target, remaining = walk.send((reply, None))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            walk.close()

    def _walk(
        self, plan: list[RouteDecision], targets: Targets, deadline: float, budget_end: float
    ) -> Generator[tuple[EndpointTarget, float], Outcome, Attempt]:
        """The plan walk without I/O: yields (target, seconds left) for each call to make,
        is sent back (reply, None) or (None, error), returns the attempt."""
        attempt = Attempt(plan[0])
        for index, decision in enumerate(plan):
            if decision.backend is Backend.ASYNC:
                attempt.decision = decision
                return attempt
            target = targets.of(decision.backend)
            assert target is not None  # the router only plans configured backends
            now = self.live.now()
            if index > 0:
                view = self.live.view(target)
                if (
                    len(attempt.tried) >= MAX_ATTEMPTS
                    or not view.available
                    or now + view.expected_ms / 1000 > budget_end
                ):
                    continue
            remaining = deadline - now
            if remaining <= 0:
                break
            started = self.live.begin(target)
            if started is None:  # its breaker opened, or its one probe left, since the plan
                attempt.error = attempt.error or BackendUnavailableError(
                    f"Endpoint '{target.endpoint_name}' is recovering from failures.",
                    retry_after_s=max(1.0, self.live.view(target).retry_after_s),
                )
                continue
            attempt.decision = (
                decision
                if index == 0
                else RouteDecision(
                    decision.backend, f"fallback-from-{plan[0].backend.value}", decision.variant
                )
            )
            attempt.tried.append(decision.backend.value)
            try:
                reply, error = yield target, remaining
            except GeneratorExit:
                # The caller gave up on the call (cancelled): not the backend's failure.
                self.live.end(target, started, ok=True)
                raise
            if reply is not None:
                self.live.end(target, started, ok=True, cold_start_ms=reply.cold_start_ms)
                attempt.reply, attempt.error = reply, None
                if len(attempt.tried) > 1:
                    self.fallbacks += 1
                return attempt
            if isinstance(error, RETRYABLE):
                self.live.end(target, started, ok=False)
                attempt.error = error
                if index > 0 or len(plan) > 1:
                    attempt.fallbacks += 1
                continue
            if isinstance(error, GatewayError):
                # The model rejected the input: the backend is healthy, the client is not.
                self.live.end(target, started, ok=True)
                attempt.error = error
                return attempt
            log.error("backend %s failed unexpectedly", target.endpoint_name, exc_info=error)
            self.live.end(target, started, ok=False)
            attempt.error = BackendError(
                f"Endpoint '{target.endpoint_name}' failed unexpectedly; the error was logged."
            )
        return attempt

    def mirror(
        self,
        model: str,
        shadow: Targets,
        body: bytes,
        content_type: str,
        accept: str,
        primary: bytes,
        timeout_s: float,
    ) -> None:
        """Send a copy to the shadow variant off the request path; compare its answer
        with the primary's. Dropped, never queued without bound, when the shadow lags."""
        stats = self.shadow.setdefault(model, ShadowStats())
        target = shadow.realtime or shadow.serverless
        if target is None:
            return
        if not self._shadow_slots.acquire(blocking=False):
            stats.dropped += 1
            return
        stats.mirrored += 1

        def run() -> None:
            try:
                started = self.live.begin(target)
                if started is None:  # the shadow's breaker is open: no copy for now
                    stats.dropped += 1
                    return
                try:
                    reply = self._invoker.invoke(target, body, content_type, accept, timeout_s)
                except Exception:
                    self.live.end(target, started, ok=False)
                    stats.shadow_errors += 1
                    return
                self.live.end(target, started, ok=True, cold_start_ms=reply.cold_start_ms)
                stats.compared += 1
                stats.agreed += agree(primary, reply.body)
            finally:
                self._shadow_slots.release()

        try:
            self._shadow_executor.submit(run)
        except RuntimeError:  # executor shut down: drop the copy, keep the slot
            self._shadow_slots.release()
            stats.dropped += 1


def agree(primary: bytes, shadow: bytes) -> bool:
    """Same labels when both answers have them, else the same predictions."""
    try:
        doc_a, doc_b = json.loads(primary), json.loads(shadow)
        a, b = doc_a.get("predictions"), doc_b.get("predictions")
    except (ValueError, AttributeError):
        return primary == shadow
    if a is None or b is None:
        return bool(doc_a == doc_b)
    labelled = isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
    if labelled and all(isinstance(x, dict) and "label" in x for x in a + b):
        return [x["label"] for x in a] == [x["label"] for x in b]
    return bool(a == b)
