"""The gateway as a local HTTP server (or a container): uvicorn in front of the Lambda
handlers, through :class:`LocalHttpApi`, with the invocation route served natively on the
event loop (:class:`NativeInvocations`)."""

from __future__ import annotations

import argparse
import gc

from functions import bootstrap
from functions.api import invocation
from functions.api.app import PUBLIC_PATHS
from functions.api.app import handler as api_handler
from functions.api.native import NativeInvocations
from functions.authorizer.app import handler as authorizer_handler
from gateway.adapters.http_server import serve
from infergw.local import observe
from infergw.local.http_api import LocalHttpApi


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gateway_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--authorizer-ttl", type=float, default=30.0)
    args = parser.parse_args(argv)
    app = LocalHttpApi(
        api_handler,
        authorizer_handler,
        PUBLIC_PATHS,
        args.authorizer_ttl,
        invocations=NativeInvocations(),
        local_routes={
            "/metrics": observe.prometheus,
            "/status": observe.status_page,
            "/status.json": observe.status_json,
        },
    )
    invocation.buffer_signals()
    bootstrap.async_invoker()  # built now, not on the event loop by the first request
    # A key revoked through this process stops working here at once, not after the TTL.
    bootstrap.on_revoke(lambda _digest: app.forget_verdicts())
    # What start-up built (modules, clients, models) lives as long as the process: out of
    # the collector's sight. Requests leave little cyclic garbage, so young collections can
    # be rarer than CPython's every 700 allocations.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    serve(app, args.host, args.port)


if __name__ == "__main__":
    main()
