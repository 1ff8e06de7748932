"""A local SageMaker runtime: ``POST /endpoints/{name}/invocations`` on the real wire
protocol, in front of model-server processes it starts, so the gateway's boto3
``sagemaker-runtime`` client reaches local models unchanged.

Two kinds of endpoint, as SageMaker hosts them:

* ``realtime``: ``instances`` model servers started with the host and kept running.
* ``serverless``: no model server until a request needs one. The first request starts one
  for real (process start, model download from S3, load) and waits for its ``/ping``; that
  cold start is measured and reported in ``x-infergw-cold-start-ms`` on the request that
  paid it. Requests beyond ``max_concurrency`` in flight are throttled
  (``ThrottlingException``), and the on-demand instance is stopped after ``idle_timeout_s``
  without traffic. ``provisioned_concurrency`` instances start with the host and are never
  scaled to zero; requests beyond them spill over to the on-demand instance.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import subprocess
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from infergw.local import processes

ACCOUNT = "123456789012"
_FORWARDED = ("content-type", "accept", "x-amzn-sagemaker-custom-attributes")
COLD_START_HEADER = "x-infergw-cold-start-ms"
COLD_START_HISTORY = 20  # cold-start durations kept per serverless endpoint
COLD_START_TIMEOUT_S = 60.0
_KINDS = ("realtime", "serverless")

Kind = Literal["realtime", "serverless"]
Process = subprocess.Popen[bytes]

log = logging.getLogger("infergw.endpoint_host")


@dataclass
class EndpointSpec:
    name: str
    model: str
    version: str
    model_uri: str
    instances: int = 1
    kind: Kind = "realtime"
    # Serverless only, as SageMaker's ServerlessConfig.
    max_concurrency: int = 5
    idle_timeout_s: float = 60.0
    provisioned_concurrency: int = 0
    # Realtime only: a dead instance is replaced after this long, as SageMaker replaces
    # an unhealthy instance (the gap is when callers see the endpoint down).
    replace_after_s: float = 3.0

    @classmethod
    def of(cls, doc: dict[str, Any]) -> EndpointSpec:
        kind = str(doc.get("kind", "realtime"))
        if kind not in _KINDS:
            raise ValueError(f"endpoint {doc.get('name')!r}: kind must be one of {_KINDS}")
        spec = cls(
            **{k: doc[k] for k in ("name", "model", "version", "model_uri") if k in doc},
            instances=int(doc.get("instances", 1)),
            kind="serverless" if kind == "serverless" else "realtime",
            max_concurrency=int(doc.get("max_concurrency", 5)),
            idle_timeout_s=float(doc.get("idle_timeout_s", 60.0)),
            provisioned_concurrency=int(doc.get("provisioned_concurrency", 0)),
            replace_after_s=float(doc.get("replace_after_s", 3.0)),
        )
        if spec.kind == "serverless":
            if spec.max_concurrency < 1:
                raise ValueError(f"endpoint {spec.name!r}: max_concurrency must be >= 1")
            if spec.idle_timeout_s <= 0:
                raise ValueError(f"endpoint {spec.name!r}: idle_timeout_s must be > 0")
            if not 0 <= spec.provisioned_concurrency <= spec.max_concurrency:
                raise ValueError(
                    f"endpoint {spec.name!r}: provisioned_concurrency must be between 0 "
                    "and max_concurrency"
                )
        return spec


@dataclass
class Instance:
    """One model-server process and the URL it serves on."""

    url: str
    proc: Process

    def alive(self) -> bool:
        return self.proc.poll() is None


def _spawn_model_server(spec: EndpointSpec, log_file: Path | None) -> Instance:
    port = processes.free_port()
    proc = processes.spawn(
        [
            "-m",
            "model_server",
            "--model-uri",
            spec.model_uri,
            "--name",
            spec.model,
            "--version",
            spec.version,
            "--port",
            str(port),
        ],
        log=str(log_file) if log_file else None,
    )
    return Instance(f"http://127.0.0.1:{port}", proc)


def _log_file(log_dir: Path | None, spec: EndpointSpec, suffix: str) -> Path | None:
    return log_dir / f"model-{spec.name}-{suffix}.log" if log_dir else None


async def _wait_ready(client: httpx.AsyncClient, instance: Instance, timeout_s: float) -> None:
    """Poll the instance's ``/ping`` until it answers; fail at once if the process dies."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        if not instance.alive():
            raise ColdStartError(f"the model server exited with {instance.proc.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if (await client.get(instance.url + "/ping", timeout=2.0)).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise ColdStartError(f"the model server was not ready after {timeout_s:.0f} s")
        await asyncio.sleep(delay)  # polling a real condition, with a deadline
        delay = min(delay * 1.5, 0.05)


class ColdStartError(Exception):
    pass


class RealtimeEndpoint:
    """``instances`` model servers, started with the host, round-robin."""

    def __init__(self, spec: EndpointSpec, log_dir: Path | None) -> None:
        self.spec = spec
        self._log_dir = log_dir
        self.instances: list[Instance] = []
        self._next: Iterator[Instance] | None = None

    def spawn(self) -> None:
        for i in range(self.spec.instances):
            log_file = _log_file(self._log_dir, self.spec, str(i))
            self.instances.append(_spawn_model_server(self.spec, log_file))

    def wait_ready(self) -> None:
        for instance in self.instances:
            processes.wait_until_ready(instance.url + "/ping", instance.proc)
        self._next = itertools.cycle(self.instances)

    def pick(self) -> str:
        assert self._next is not None, "endpoint not started"
        for _ in range(len(self.instances)):
            instance = next(self._next)
            if instance.alive():
                return instance.url
        return self.instances[0].url  # all down: the call fails as on a dead instance

    async def replace_dead(self, client: httpx.AsyncClient) -> list[int]:
        """Start a new model server in place of each dead one; returns the new pids."""
        started = []
        for i, instance in enumerate(self.instances):
            if instance.alive():
                continue
            fresh = _spawn_model_server(self.spec, _log_file(self._log_dir, self.spec, str(i)))
            try:
                await _wait_ready(client, fresh, timeout_s=60)
            except ColdStartError:
                processes.stop([fresh.proc])
                raise
            self.instances[i] = fresh
            started.append(fresh.proc.pid)
        self._next = itertools.cycle(self.instances)
        return started

    def owned(self) -> list[Process]:
        return [i.proc for i in self.instances]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "realtime",
            "model": self.spec.model,
            "instances": [i.url for i in self.instances],
            "pids": [i.proc.pid for i in self.instances],
        }


@dataclass
class Lease:
    """The instance one invocation runs on, and the cold start it paid, if any."""

    instance: Instance
    provisioned: bool
    cold_start_ms: float | None = None


@dataclass
class ServerlessEndpoint:
    """Provisioned instances started with the host, plus at most one on-demand instance
    started by the first request that finds none and stopped when idle. One model server
    serves many concurrent requests, so one on-demand instance is enough for
    ``max_concurrency``."""

    spec: EndpointSpec
    log_dir: Path | None
    provisioned: list[Instance] = field(default_factory=list)
    on_demand: Instance | None = None
    in_flight: int = 0
    last_active: float = field(default_factory=time.monotonic)
    cold_starts_ms: deque[float] = field(default_factory=lambda: deque(maxlen=COLD_START_HISTORY))
    cold_start_count: int = 0
    _provisioned_in_flight: int = 0
    _round_robin: Iterator[int] = field(default_factory=itertools.count)
    _starting: asyncio.Task[tuple[Instance, float]] | None = None
    _starting_proc: Process | None = None
    _stopping: list[Process] = field(default_factory=list)

    # -- host lifecycle --------------------------------------------------------------------
    def spawn(self) -> None:
        for i in range(self.spec.provisioned_concurrency):
            log_file = _log_file(self.log_dir, self.spec, f"provisioned-{i}")
            self.provisioned.append(_spawn_model_server(self.spec, log_file))

    def wait_ready(self) -> None:
        for instance in self.provisioned:
            processes.wait_until_ready(instance.url + "/ping", instance.proc)

    async def cancel_start(self) -> None:
        task = self._starting
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def owned(self) -> list[Process]:
        procs = [i.proc for i in self.provisioned]
        if self.on_demand is not None:
            procs.append(self.on_demand.proc)
        if self._starting_proc is not None:
            procs.append(self._starting_proc)
        return procs + self._stopping

    # -- invocations -----------------------------------------------------------------------
    def admit(self) -> bool:
        """Count one more invocation in flight, unless that exceeds max concurrency."""
        if self.in_flight >= self.spec.max_concurrency:
            return False
        self.in_flight += 1
        self.last_active = time.monotonic()
        return True

    def release(self, lease: Lease | None) -> None:
        self.in_flight -= 1
        if lease is not None and lease.provisioned:
            self._provisioned_in_flight -= 1
        self.last_active = time.monotonic()

    async def lease(self, client: httpx.AsyncClient) -> Lease:
        """An instance for one admitted invocation: a provisioned one while provisioned
        concurrency lasts, else the on-demand one, started (and waited for) if need be.
        Requests arriving during a cold start wait for that same start."""
        warm = [i for i in self.provisioned if i.alive()]
        if warm and self._provisioned_in_flight < self.spec.provisioned_concurrency:
            self._provisioned_in_flight += 1
            return Lease(warm[next(self._round_robin) % len(warm)], provisioned=True)
        if self.on_demand is not None:
            if self.on_demand.alive():
                return Lease(self.on_demand, provisioned=False)
            log.warning("%s: on-demand pid %d died", self.spec.name, self.on_demand.proc.pid)
            self.on_demand = None
        task = self._starting
        paid = task is None
        if task is None:
            task = self._starting = asyncio.create_task(self._cold_start(client))
            task.add_done_callback(self._start_done)
        instance, elapsed_ms = await asyncio.shield(task)
        return Lease(instance, provisioned=False, cold_start_ms=elapsed_ms if paid else None)

    async def _cold_start(self, client: httpx.AsyncClient) -> tuple[Instance, float]:
        started = time.perf_counter()
        try:
            instance = _spawn_model_server(
                self.spec, _log_file(self.log_dir, self.spec, "on-demand")
            )
        except OSError as exc:
            raise ColdStartError(f"the model server could not be started: {exc}") from exc
        self._starting_proc = instance.proc
        try:
            await _wait_ready(client, instance, COLD_START_TIMEOUT_S)
        except asyncio.CancelledError:
            raise  # host shutdown: it stops _starting_proc with everything else
        except Exception as exc:
            self._starting_proc = None
            await self._stop(instance.proc)
            if isinstance(exc, ColdStartError):
                raise
            raise ColdStartError(f"{type(exc).__name__}: {exc}") from exc
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        self._starting_proc = None
        self.on_demand = instance
        self.cold_starts_ms.append(elapsed_ms)
        self.cold_start_count += 1
        log.info("%s: cold start %.0f ms, pid %d", self.spec.name, elapsed_ms, instance.proc.pid)
        return instance, elapsed_ms

    def _start_done(self, task: asyncio.Task[tuple[Instance, float]]) -> None:
        if self._starting is task:
            self._starting = None
        if not task.cancelled() and task.exception() is not None:  # retrieved: no warning
            log.error("%s: cold start failed: %s", self.spec.name, task.exception())

    # -- scale to zero ---------------------------------------------------------------------
    def idle_expired(self, now: float) -> bool:
        return (
            self.on_demand is not None
            and self._starting is None
            and self.in_flight == 0
            and now - self.last_active > self.spec.idle_timeout_s
        )

    async def scale_to_zero(self) -> list[int]:
        """Stop the on-demand instance (after a start in progress, if any); returns once the
        process has exited. Provisioned instances stay."""
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._starting)
        instance, self.on_demand = self.on_demand, None
        if instance is None:
            return []
        await self._stop(instance.proc)
        return [instance.proc.pid]

    async def _stop(self, proc: Process) -> None:
        """processes.stop off the event loop; the process stays owned (stopped again at
        shutdown) until it has exited, even if the caller is cancelled meanwhile."""
        self._stopping.append(proc)
        stopping = asyncio.ensure_future(asyncio.to_thread(processes.stop, [proc]))
        stopping.add_done_callback(lambda _: self._stopping.remove(proc))
        await asyncio.shield(stopping)

    def describe(self) -> dict[str, Any]:
        warm = [i for i in self.provisioned if i.alive()]
        if self.on_demand is not None and self.on_demand.alive():
            warm.append(self.on_demand)
        return {
            "kind": "serverless",
            "model": self.spec.model,
            "instances": [i.url for i in warm],
            "pids": [p.pid for p in self.owned()],
            "warm_instances": len(warm),
            "provisioned_pids": [i.proc.pid for i in self.provisioned],
            "on_demand_pid": self.on_demand.proc.pid if self.on_demand else None,
            "starting": self._starting is not None,
            "in_flight": self.in_flight,
            "max_concurrency": self.spec.max_concurrency,
            "provisioned_concurrency": self.spec.provisioned_concurrency,
            "idle_timeout_s": self.spec.idle_timeout_s,
            "idle_s": round(time.monotonic() - self.last_active, 3),
            "cold_starts": self.cold_start_count,
            "last_cold_starts_ms": [round(ms, 1) for ms in self.cold_starts_ms],
        }


Endpoint = RealtimeEndpoint | ServerlessEndpoint


async def _scale_idle_to_zero(endpoints: list[ServerlessEndpoint]) -> None:
    """Background task: stop on-demand instances idle longer than their timeout."""
    interval = max(0.05, min([1.0] + [e.spec.idle_timeout_s / 4 for e in endpoints]))
    while True:
        await asyncio.sleep(interval)  # a periodic check, not a synchronisation
        now = time.monotonic()
        idle = [e for e in endpoints if e.idle_expired(now)]
        results = await asyncio.gather(*(e.scale_to_zero() for e in idle), return_exceptions=True)
        for endpoint, result in zip(idle, results, strict=True):
            if isinstance(result, BaseException):
                log.error("%s: scale to zero failed: %r", endpoint.spec.name, result)
            elif result:
                log.info("%s: idle, stopped pid %s", endpoint.spec.name, result)


async def _replace_dead_instances(
    endpoints: list[RealtimeEndpoint], client: httpx.AsyncClient
) -> None:
    """Background task: an instance found dead is replaced after its endpoint's delay."""
    noticed: dict[str, float] = {}
    while True:
        await asyncio.sleep(0.25)  # a periodic health check, not a synchronisation
        now = time.monotonic()
        for endpoint in endpoints:
            name = endpoint.spec.name
            if all(i.alive() for i in endpoint.instances):
                noticed.pop(name, None)
                continue
            first = noticed.setdefault(name, now)
            if now - first < endpoint.spec.replace_after_s:
                continue
            try:
                pids = await endpoint.replace_dead(client)
                log.info("%s: replaced dead instance(s) with pid %s", name, pids)
                noticed.pop(name, None)
            except ColdStartError as exc:
                log.error("%s: replacement failed: %s", name, exc)


def _error(status: int, code: str, message: str, **members: Any) -> Response:
    # rest-json errors as botocore parses them: the code in x-amzn-ErrorType, the
    # modeled members (OriginalStatusCode, ...) in the body.
    return JSONResponse(
        {"message": message, **members}, status_code=status, headers={"x-amzn-ErrorType": code}
    )


def _not_found(name: str) -> Response:
    return _error(400, "ValidationError", f"Endpoint {name} of account {ACCOUNT} not found.")


async def _forward(
    client: httpx.AsyncClient, name: str, url: str, body: bytes, headers: dict[str, str]
) -> Response:
    try:
        reply = await client.post(url + "/invocations", content=body, headers=headers)
    except httpx.TransportError as exc:
        return _error(
            503, "ServiceUnavailable", f"Endpoint {name} is unavailable: {type(exc).__name__}."
        )
    if reply.status_code >= 400:
        return _error(
            424,
            "ModelError",
            f"Received client error ({reply.status_code}) from primary with message "
            f'"{reply.text[:512]}".',
            OriginalStatusCode=reply.status_code,
            OriginalMessage=reply.text,
            LogStreamArn=f"arn:aws:logs:local:{ACCOUNT}:log-group:/aws/sagemaker/Endpoints/{name}",
        )
    return Response(
        reply.content,
        media_type=reply.headers.get("content-type", "application/json"),
        headers={"x-Amzn-Invoked-Production-Variant": "AllTraffic"},
    )


def create_app(specs: list[EndpointSpec], log_dir: Path | None = None) -> Starlette:
    endpoints: dict[str, Endpoint] = {
        spec.name: (
            ServerlessEndpoint(spec, log_dir)
            if spec.kind == "serverless"
            else RealtimeEndpoint(spec, log_dir)
        )
        for spec in specs
    }
    serverless = [e for e in endpoints.values() if isinstance(e, ServerlessEndpoint)]
    state: dict[str, httpx.AsyncClient] = {}

    def owned() -> list[Process]:
        return [p for e in endpoints.values() for p in e.owned()]

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            for endpoint in endpoints.values():
                endpoint.spawn()
            for endpoint in endpoints.values():
                endpoint.wait_ready()
        except BaseException:
            processes.stop(owned())
            raise
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
            state["client"] = client
            scaler = asyncio.create_task(_scale_idle_to_zero(serverless)) if serverless else None
            realtime = [e for e in endpoints.values() if isinstance(e, RealtimeEndpoint)]
            healer = asyncio.create_task(_replace_dead_instances(realtime, client))
            try:
                yield
            finally:
                for task in (scaler, healer):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                for endpoint in serverless:
                    await endpoint.cancel_start()
                processes.stop(owned())

    async def invoke(request: Request) -> Response:
        name = request.path_params["name"]
        endpoint = endpoints.get(name)
        if endpoint is None:
            return _not_found(name)
        client = state["client"]
        if isinstance(endpoint, RealtimeEndpoint):
            body = await request.body()
            headers = {h: request.headers[h] for h in _FORWARDED if h in request.headers}
            return await _forward(client, name, endpoint.pick(), body, headers)
        if not endpoint.admit():
            return _error(
                400,
                "ThrottlingException",
                f"Rate exceeded: endpoint {name} is at its maximum concurrency "
                f"({endpoint.spec.max_concurrency} concurrent invocations).",
            )
        lease: Lease | None = None
        try:
            body = await request.body()
            headers = {h: request.headers[h] for h in _FORWARDED if h in request.headers}
            try:
                lease = await endpoint.lease(client)
            except ColdStartError as exc:
                return _error(503, "ServiceUnavailable", f"Endpoint {name} could not start: {exc}.")
            response = await _forward(client, name, lease.instance.url, body, headers)
            if lease.cold_start_ms is not None:
                response.headers[COLD_START_HEADER] = f"{lease.cold_start_ms:.1f}"
            return response
        finally:
            endpoint.release(lease)

    async def describe(_: Request) -> Response:
        return JSONResponse({n: e.describe() for n, e in endpoints.items()})

    async def scale_to_zero(request: Request) -> Response:
        name = request.path_params["name"]
        endpoint = endpoints.get(name)
        if endpoint is None:
            return _not_found(name)
        if not isinstance(endpoint, ServerlessEndpoint):
            return _error(400, "ValidationError", f"Endpoint {name} is not a serverless endpoint.")
        stopped = await endpoint.scale_to_zero()
        return JSONResponse({"endpoint": name, "stopped_pids": stopped})

    return Starlette(
        routes=[
            Route("/endpoints/{name}/invocations", invoke, methods=["POST"]),
            Route("/endpoints", describe, methods=["GET"]),
            Route("/admin/endpoints/{name}/scale-to-zero", scale_to_zero, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="endpoint_host", description=__doc__)
    parser.add_argument("--config", required=True, help='JSON file: {"endpoints": [...]}')
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--log-dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per proxied request
    doc = json.loads(Path(args.config).read_text())
    specs = [EndpointSpec.of(e) for e in doc["endpoints"]]
    app = create_app(specs, Path(args.log_dir) if args.log_dir else None)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
