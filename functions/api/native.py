"""``POST /v1/models/{model}/invocations`` on an event loop: the container front end's hot
path. The same request parsing, core and answer as the Lambda handler's ``invoke_event``;
the backend call is awaited on pooled connections instead of blocking a thread, and no API
Gateway event is built."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio.to_thread

from functions import bootstrap
from functions.api import invocation
from functions.api.invocation import Answer
from gateway.auth import principal_from_context
from gateway.errors import GatewayError
from gateway.ports import AsyncEndpointInvoker
from gateway.service import Gateway, Invocation
from gateway.values import Backend, InvocationRequest, Principal


class NativeInvocations:
    def __init__(
        self,
        invoker: AsyncEndpointInvoker | None = None,
        gateway: Callable[[], Gateway] = bootstrap.gateway,
    ) -> None:
        self._invoker = invoker
        self._gateway = gateway
        # Authorizer contexts are few (one per caller) and immutable once cached.
        self._principals: dict[int, tuple[Mapping[str, Any], Principal]] = {}

    async def __call__(
        self,
        model: str,
        headers: Mapping[str, str],
        body: bytes,
        authorizer_context: Mapping[str, Any] | None,
        request_id: str,
        path: str,
    ) -> Answer:
        started = time.perf_counter()
        try:
            principal = self._principal(authorizer_context)
            request = invocation.parse_request(model, headers, body, request_id)
            gateway = self._gateway()
            if gateway.begins_without_waiting(principal, model):
                call = gateway.begin(principal, request)
            else:
                call = await _begin_in_thread(gateway, principal, request)
            try:
                attempt = await gateway.dispatcher.call_async(
                    self._invoker or bootstrap.async_invoker(),
                    call.steps,
                    call.targets,
                    body,
                    call.media,
                    request.accept,
                    call.deadline,
                    call.budget_end,
                )
            except BaseException:
                gateway.abandon(call)
                raise
            if attempt.decision.backend is Backend.ASYNC:
                # Enqueueing writes the job's input to the store: off the event loop.
                outcome = await anyio.to_thread.run_sync(gateway.finish, call, attempt)
            else:
                outcome = gateway.finish(call, attempt)
        except GatewayError as error:
            return invocation.problem(model, error, path, started)
        return invocation.answer(model, outcome, started)

    def _principal(self, context: Mapping[str, Any] | None) -> Principal:
        if context is None:
            return principal_from_context(None)
        hit = self._principals.get(id(context))
        if hit is not None and hit[0] is context:
            return hit[1]
        principal = principal_from_context(context)
        if len(self._principals) > 10_000:
            self._principals.clear()
        self._principals[id(context)] = (context, principal)
        return principal


async def _begin_in_thread(
    gateway: Gateway, principal: Principal, request: InvocationRequest
) -> Invocation:
    """``begin`` where it waits on a store (a policy to read, a rate-limit lease to take),
    off the event loop. The thread cannot be stopped: a caller that goes away meanwhile
    has its call abandoned when ``begin`` returns, so no concurrency slot stays taken."""
    loop = asyncio.get_running_loop()
    begun = loop.run_in_executor(None, gateway.begin, principal, request)
    try:
        return await asyncio.shield(begun)
    except asyncio.CancelledError:
        begun.add_done_callback(functools.partial(_abandon, gateway))
        raise


def _abandon(gateway: Gateway, begun: asyncio.Future[Invocation]) -> None:
    if not begun.cancelled() and begun.exception() is None:
        gateway.abandon(begun.result())
