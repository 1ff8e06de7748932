"""The ``infergw`` command."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel

from infergw import jobs_cli, policy_cli
from infergw.client import Client, ProblemError

# A handwritten zero from scikit-learn's digits (8x8 pixels, 0-16), for the sample curl.
SAMPLE_ZERO = [
    0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0,
    0, 4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0,
    0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0,
]  # fmt: skip
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _client(args: argparse.Namespace) -> Client:
    if args.url and args.key:
        return Client(args.url, args.key)
    return Client.from_connection_file(Path(args.connection) if args.connection else None)


def cmd_invoke(args: argparse.Namespace) -> int:
    if (args.data is None) == (args.file is None):
        err.print("[red]give exactly one of --data or --file[/red]")
        return 2
    body = args.data.encode() if args.data is not None else Path(args.file).read_bytes()
    content_type = args.content_type or _guess_type(args.file)
    headers = {}
    if args.budget_ms:
        headers["X-Latency-Budget-Ms"] = str(args.budget_ms)
    if args.prefer_async:
        headers["Prefer"] = "respond-async"
    with _client(args) as client:
        result = client.invoke(args.model, body=body, content_type=content_type, headers=headers)
    err.print(f"[dim]route: {result.route}  variant: {result.variant}[/dim]")
    print(json.dumps(result.body, indent=None if args.compact else 2))
    return 0


def _guess_type(file: str | None) -> str:
    suffix = Path(file).suffix.lower() if file else ".json"
    return {
        ".csv": "text/csv",
        ".ndjson": "application/x-ndjson",
        ".jsonl": "application/x-ndjson",
        ".npy": "application/x-npy",
    }.get(suffix, "application/json")


def cmd_models(args: argparse.Namespace) -> int:
    if args.action == "build":
        from infergw.demo.models import build_all

        build_all(Path(args.out))
        return 0
    with _client(args) as client:
        print(json.dumps(client.models(), indent=2))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from infergw.local.stack import LocalStack, StackConfig

    config = StackConfig(
        state_dir=Path(args.state_dir),
        gateway_port=args.port,
        aws_port=args.aws_port,
        endpoint_port=args.endpoint_port,
        notification_topics=args.notification_topics,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = LocalStack(config, report=lambda line: console.print(f"[dim]{line}[/dim]"))
    with console.status("starting the local stack..."):
        conn = stack.start()
    try:
        sample = json.dumps({"inputs": [SAMPLE_ZERO]})
        others = "".join(
            f"              {key}  (tenant {tenant})\n"
            for tenant, key in conn.keys.items()
            if key != conn.api_key
        )
        console.print(
            Panel.fit(
                f"gateway       {conn.gateway_url}\n"
                f"API key       {conn.api_key}  (operator, admin scope)\n"
                f"{others}"
                f"AWS endpoint  {conn.aws_endpoint_url}  (region {conn.region})\n"
                f"connection    {config.state_dir / 'local.json'}",
                title="infergw local stack is up",
                subtitle="Ctrl-C stops everything",
            )
        )
        # Plain print: a terminal-wrapped panel would break the command when pasted.
        print(
            "try it:\n"
            f"curl -s {conn.gateway_url}/v1/models/digits/invocations "
            f"-H 'Authorization: Bearer {conn.api_key}' "
            f"-H 'Content-Type: application/json' -d '{sample}'",
            flush=True,
        )
        while not stop.wait(1.0):
            dead = stack.dead()
            if dead:
                err.print(
                    f"[red]stopped: {', '.join(dead)} exited; logs in "
                    f"{config.state_dir / 'logs'}[/red]"
                )
                return 1
        return 0
    finally:
        with console.status("stopping..."):
            stack.stop()
        console.print("stopped")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infergw", description="Serverless inference gateway")
    parser.add_argument("--url", help="gateway URL (default: from the connection file)")
    parser.add_argument("--key", help="API key (default: from the connection file)")
    parser.add_argument("--connection", help="connection file (default .infergw/local.json)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the local stack in the foreground")
    env = os.environ.get
    up.add_argument(
        "--port",
        type=int,
        default=int(env("INFERGW_GATEWAY_PORT", 8000)),
        help="gateway port ($INFERGW_GATEWAY_PORT)",
    )
    up.add_argument(
        "--aws-port",
        type=int,
        default=int(env("INFERGW_AWS_PORT", 4566)),
        help="AWS emulator port ($INFERGW_AWS_PORT)",
    )
    up.add_argument(
        "--endpoint-port",
        type=int,
        default=int(env("INFERGW_ENDPOINT_PORT", 8090)),
        help="SageMaker runtime port ($INFERGW_ENDPOINT_PORT)",
    )
    up.add_argument(
        "--state-dir",
        default=env("INFERGW_STATE_DIR", ".infergw"),
        help="where local.json, models and logs go ($INFERGW_STATE_DIR)",
    )
    up.add_argument(
        "--notification-topics",
        choices=["standard", "fifo"],
        default=env("INFERGW_NOTIFICATION_TOPICS", "standard"),
        help="job notification topics: fifo for exactly-once delivery to SQS FIFO queues "
        "($INFERGW_NOTIFICATION_TOPICS)",
    )
    up.set_defaults(func=cmd_up)

    invoke = sub.add_parser("invoke", help="invoke a model and print the prediction")
    invoke.add_argument("model")
    invoke.add_argument("--data", help="request body, e.g. '{\"inputs\": [[...]]}'")
    invoke.add_argument("--file", help="request body from a file (.json, .csv, .ndjson, .npy)")
    invoke.add_argument("--content-type")
    invoke.add_argument("--budget-ms", type=int, help="X-Latency-Budget-Ms")
    invoke.add_argument("--prefer-async", action="store_true")
    invoke.add_argument("--compact", action="store_true")
    invoke.set_defaults(func=cmd_invoke)

    models = sub.add_parser("models", help="list models, or build the demo models")
    models.add_argument("action", choices=["list", "build"], nargs="?", default="list")
    models.add_argument("--out", default=".infergw/models")
    models.set_defaults(func=cmd_models)

    def with_client(command: Any) -> Any:
        def run(args: argparse.Namespace) -> int:
            with _client(args) as client:
                return int(command(args, client))

        return run

    policy_cli.add_parsers(sub, with_client)
    jobs_cli.add_parsers(sub, with_client)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:  # its options are the worker's own
        from async_worker.__main__ import main as worker_main

        return worker_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ProblemError as exc:
        err.print(
            f"[red]{exc.status} {exc.problem.get('title', '')}[/red]: "
            f"{exc.problem.get('detail', '')}"
        )
        return 1
    except (FileNotFoundError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        return 1


if __name__ == "__main__":
    sys.exit(main())
