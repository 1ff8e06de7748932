"""``infergw jobs``, ``infergw worker`` and ``infergw notifications``."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from infergw.client import Client, JobFailedError

console = Console(highlight=False)
_TYPES = {".csv": "text/csv", ".npy": "application/x-npy", ".json": "application/json"}


def cmd_jobs(args: argparse.Namespace, client: Client) -> int:
    if args.action == "submit":
        return _submit(args, client)
    if args.action == "list":
        table = Table("job id", "model", "status", "records", "created")
        for job in client.jobs(args.limit):
            progress = job["progress"]
            table.add_row(
                job["job_id"],
                job["model"],
                job["status"],
                f"{progress['records_done']}/{progress['records_total'] or '?'}",
                time.strftime("%H:%M:%S", time.localtime(job["timings"]["created_at"])),
            )
        console.print(table)
        return 0
    if not args.target:
        console.print(f"[red]jobs {args.action} needs a job id[/red]")
        return 2
    if args.action == "status":
        print(json.dumps(client.job(args.target), indent=2))
        return 0
    if args.action == "cancel":
        job = client.cancel(args.target)
        console.print(f"{job['job_id']}: {job['status']}")
        return 0
    job = client.job(args.target)
    if job["status"] != "COMPLETED":
        console.print(f"[red]{job['job_id']} is {job['status']}, nothing to download[/red]")
        return 1
    out = Path(args.out or f"{job['job_id']}.out")
    size = client.download(job, out)
    console.print(f"wrote {out} ({size} bytes)")
    return 0


def _submit(args: argparse.Namespace, client: Client) -> int:
    if not args.target or not args.file:
        console.print("[red]jobs submit needs a model and --file[/red]")
        return 2
    path = Path(args.file)
    content_type = args.content_type or _TYPES.get(path.suffix.lower(), "application/x-ndjson")
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bars:
        task = bars.add_task("upload", total=path.stat().st_size)
        ticket = client.submit_job(
            args.target,
            path=path,
            content_type=content_type,
            accept=args.accept,
            inference_id=args.inference_id,
            progress=lambda n: bars.advance(task, n),
        )
    job_id = ticket["job_id"]
    console.print(f"job {job_id} created; status {ticket['status_url']}")
    if not args.wait:
        return 0
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
        console=console,
    ) as bars:
        task = bars.add_task("queued", total=0)

        def update(job: dict[str, Any]) -> None:
            progress = job["progress"]
            bars.update(
                task,
                description=job["status"].lower(),
                completed=progress["records_done"],
                total=progress["records_total"] or max(1, progress["records_done"]),
            )

        try:
            job = client.wait(job_id, timeout_s=args.timeout, on_update=update)
        except JobFailedError as exc:
            console.print(f"[red]{exc}[/red]")
            return 1
    out = Path(args.out or f"{job_id}.out")
    size = client.download(job, out)
    console.print(f"completed: {job['progress']['records_done']} rows; wrote {out} ({size} bytes)")
    return 0


def cmd_notifications(args: argparse.Namespace) -> int:
    """Subscribe a fresh queue to the job topics, with a filter, and print what arrives."""
    import boto3

    connection = json.loads(Path(args.connection or ".infergw/local.json").read_text())
    resources = connection["resources"]
    session = boto3.session.Session(
        region_name=connection.get("region", "us-east-1"),
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    endpoint = connection["aws_endpoint_url"]
    sqs = session.client("sqs", endpoint_url=endpoint)
    sns = session.client("sns", endpoint_url=endpoint)
    url = sqs.create_queue(QueueName=f"infergw-tail-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    policy = {
        k: [v]
        for k, v in (("tenant", args.tenant), ("model", args.model), ("status", args.status))
        if v
    }
    subscriptions = []
    for topic in (
        resources["INFERGW_JOB_SUCCEEDED_TOPIC_ARN"],
        resources["INFERGW_JOB_FAILED_TOPIC_ARN"],
    ):
        attributes = {"FilterPolicy": json.dumps(policy)} if policy else {}
        subscriptions.append(
            sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes=attributes)[
                "SubscriptionArn"
            ]
        )
    console.print(f"[dim]listening (filter {policy or 'none'}); Ctrl-C stops[/dim]")
    seen = 0
    try:
        while args.count is None or seen < args.count:
            reply = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=5)
            for message in reply.get("Messages", []):
                envelope = json.loads(message["Body"])
                attributes = {
                    k: v["Value"] for k, v in envelope.get("MessageAttributes", {}).items()
                }
                print(
                    json.dumps(
                        {"attributes": attributes, "message": json.loads(envelope["Message"])}
                    ),
                    flush=True,
                )
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                seen += 1
    except KeyboardInterrupt:
        pass
    finally:
        for subscription in subscriptions:
            sns.unsubscribe(SubscriptionArn=subscription)
        sqs.delete_queue(QueueUrl=url)
    return 0


def add_parsers(sub: Any, with_client: Any) -> None:
    jobs = sub.add_parser("jobs", help="async jobs: submit, status, list, cancel, download")
    jobs.add_argument("action", choices=["submit", "status", "list", "cancel", "download"])
    jobs.add_argument("target", nargs="?", help="a model (submit) or a job id")
    jobs.add_argument("--file", help="input file (.ndjson, .csv, .npy, .json)")
    jobs.add_argument("--content-type")
    jobs.add_argument("--accept", default="application/x-ndjson", help="output format")
    jobs.add_argument("--inference-id")
    jobs.add_argument("--wait", action="store_true", help="wait, then download the result")
    jobs.add_argument("--timeout", type=float, default=3600.0)
    jobs.add_argument("--out", help="where the output goes (default JOB_ID.out)")
    jobs.add_argument("--limit", type=int, default=50)
    jobs.set_defaults(func=with_client(cmd_jobs))

    notifications = sub.add_parser("notifications", help="print job notifications as they come")
    notifications.add_argument("action", choices=["tail"])
    notifications.add_argument("--tenant")
    notifications.add_argument("--model")
    notifications.add_argument("--status", choices=["COMPLETED", "FAILED"])
    notifications.add_argument("--count", type=int, help="stop after this many")
    notifications.set_defaults(func=cmd_notifications)

    worker = sub.add_parser(
        "worker", help="run an async worker (add --help for its options)", add_help=False
    )
    worker.add_argument("worker_args", nargs=argparse.REMAINDER)
    worker.set_defaults(func=lambda args: _worker(args.worker_args))


def _worker(argv: list[str]) -> int:
    from async_worker.__main__ import main

    return main(argv)


def cmd_stats(args: argparse.Namespace) -> int:
    """The local gateway's live metrics in the terminal (what /status draws)."""
    import httpx

    connection = json.loads(Path(args.connection or ".infergw/local.json").read_text())
    snapshot = httpx.get(connection["gateway_url"] + "/status.json", timeout=10).json()
    routes = Table(
        "model",
        "route",
        "requests",
        "5xx",
        "4xx",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        title=f"last {snapshot['window_s'] / 60:.0f} min",
    )
    for r in snapshot["routes"]:
        routes.add_row(
            r["model"],
            r["route"],
            str(r["requests"]),
            str(r["errors"]),
            str(r["rejected"]),
            *(f"{r[k]:.1f}" if r[k] is not None else "-" for k in ("p50_ms", "p95_ms", "p99_ms")),
        )
    console.print(routes)
    backends = Table("backend", "in flight", "ewma ms", "p99 ms", "breaker", "cold starts")
    for name, b in snapshot["backends"].items():
        backends.add_row(
            name,
            str(b["in_flight"]),
            str(b["ewma_ms"]),
            str(b["p99_ms"]),
            b["breaker"],
            str(b["cold_starts"]),
        )
    console.print(backends)
    queue = snapshot.get("queue") or {}
    limiter = snapshot.get("limiter") or {}
    console.print(
        f"fallbacks {snapshot['fallbacks']} · limited {limiter.get('limited', 0)} · "
        f"jobs waiting {queue.get('backlog', '-')} · dead letters "
        f"{queue.get('dead_letters', '-')}"
    )
    return 0
