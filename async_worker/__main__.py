"""``python -m async_worker`` (or ``infergw worker``): run a worker until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import uuid

from async_worker.runner import JobRunner, ModelCache, RunnerConfig
from async_worker.worker import QueueConfig, Worker
from gateway.adapters import aws
from gateway.adapters.dynamodb_jobs import DynamoDBJobStore
from gateway.adapters.s3 import S3ObjectStore
from gateway.adapters.sns import SnsNotifier
from gateway.settings import Settings, SettingsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infergw worker", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=1, help="jobs run at once")
    parser.add_argument("--batch-rows", type=int, default=1024, help="rows per inference batch")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument(
        "--read-ahead",
        type=_not_negative,
        default=2,
        help="reads of a job's input (~1 MiB of .npy each) fetched and checked in a thread "
        "while the model runs; 0 reads in line, for hosts whose CPUs the models keep busy",
    )
    parser.add_argument("--wait", type=int, default=20, help="SQS long-poll seconds")
    parser.add_argument("--visibility", type=int, default=60, help="SQS visibility seconds")
    parser.add_argument("--lease", type=float, default=60.0, help="job lease seconds")
    parser.add_argument("--max-receives", type=int, default=3, help="the queue's maxReceiveCount")
    parser.add_argument("--sweep-every", type=float, default=15.0)
    return parser


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def build(args: argparse.Namespace, settings: Settings) -> Worker:
    dynamodb = aws.client("dynamodb", read_timeout=5)
    s3 = aws.client("s3", read_timeout=60)
    jobs = DynamoDBJobStore(dynamodb, settings.jobs_table)
    objects = S3ObjectStore(s3, settings.bucket)
    runner = JobRunner(
        RunnerConfig(
            worker_id=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}",
            region=aws.region(),
            lease_s=args.lease,
            batch_rows=args.batch_rows,
            read_ahead=args.read_ahead,
        ),
        jobs,
        objects,
        ModelCache(objects, threads=args.threads),
        SnsNotifier(aws.client("sns"), settings.succeeded_topic_arn, settings.failed_topic_arn),
        settings.bucket,
    )
    config = QueueConfig(
        queue_url=settings.jobs_queue_url,
        dlq_url=settings.jobs_dlq_url,
        wait_s=args.wait,
        visibility_s=args.visibility,
        max_receives=args.max_receives,
        concurrency=args.concurrency,
        sweep_every_s=args.sweep_every,
    )
    return Worker(runner, aws.client("sqs", read_timeout=args.wait + 10), jobs, config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        settings = Settings.from_environ()
    except SettingsError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    missing = [n for n in ("jobs_table", "bucket", "jobs_queue_url") if not getattr(settings, n)]
    if missing:
        print(f"worker: settings missing: {missing}", file=sys.stderr)
        return 2
    worker = build(args, settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop.set())
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
