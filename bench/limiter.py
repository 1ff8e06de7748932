"""Rate limiter: DynamoDB calls per 1,000 requests, and over-admission with 1, 2 and 4
gateway processes hammering one limit, against a real moto server.

    .venv/bin/python bench/limiter.py [--seconds 3] [--json bench/results/limiter.json]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.adapters.dynamodb_limits import DynamoDBLimitStore
from gateway.ratelimit import LeasedLimiter, Limit
from infergw.local import processes

TABLE = "bench-limits"


def _client(url: str):  # type: ignore[no-untyped-def]
    return boto3.client(
        "dynamodb",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _worker(url: str, limit: Limit, seconds: float, start_at: float, out: mp.Queue) -> None:
    limiter = LeasedLimiter(DynamoDBLimitStore(_client(url), TABLE))
    while time.time() < start_at:
        time.sleep(0.001)
    admitted = requests = 0
    end = start_at + seconds
    while time.time() < end:
        requests += 1
        admitted += limiter.acquire(limit).allowed
    out.put((admitted, requests, limiter.store_calls))


def over_admission(url: str, instances: int, rate: float, burst: int, seconds: float) -> dict:
    limit = Limit("bench", f"bench#{uuid.uuid4().hex}", rate, burst, math.ceil(burst / rate))
    out: mp.Queue = mp.Queue()
    start_at = time.time() + 1.5  # every process connected before the clock starts
    procs = [
        mp.Process(target=_worker, args=(url, limit, seconds, start_at, out))
        for _ in range(instances)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    admitted = sum(r[0] for r in results)
    requests = sum(r[1] for r in results)
    calls = sum(r[2] for r in results)
    allowance = burst + rate * seconds
    batch = LeasedLimiter(None).batch(limit)  # type: ignore[arg-type]
    return {
        "instances": instances,
        "rate_per_s": rate,
        "burst": burst,
        "seconds": seconds,
        "requests": requests,
        "admitted": admitted,
        "allowance": allowance,
        "over_admitted": max(0, admitted - allowance),
        "stated_bound_slack": 2 * instances * batch,
        "within_bound": admitted <= allowance + 2 * instances * batch,
        "store_calls": calls,
        "store_calls_per_1000_admitted": round(1000 * calls / max(1, admitted), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="bench/results/limiter.json")
    args = parser.parse_args()
    port = processes.free_port()
    moto = processes.spawn(["-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_until_ready(url + "/moto-api/", moto)
        _client(url).create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "limit_key", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "limit_key", "KeyType": "HASH"}],
        )
        rows = []
        for instances in (1, 2, 4):
            runs = [
                over_admission(url, instances, args.rate, int(args.rate), args.seconds)
                for _ in range(args.repeats)
            ]
            median = sorted(runs, key=lambda r: r["admitted"])[len(runs) // 2]
            median["worst_over_admitted"] = max(r["over_admitted"] for r in runs)
            median["median_calls_per_1000"] = statistics.median(
                r["store_calls_per_1000_admitted"] for r in runs
            )
            rows.append(median)
    finally:
        processes.stop([moto])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {"machine": os.uname().machine, "cpus": os.cpu_count(), "results": rows}, indent=2
        )
    )
    print(
        "| processes | admitted / allowance | worst over-admission (bound) | "
        "DynamoDB calls per 1,000 admitted |"
    )
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['instances']} | {r['admitted']} / {r['allowance']:.0f} | "
            f"{r['worst_over_admitted']:.0f} ({r['stated_bound_slack']}) | "
            f"{r['median_calls_per_1000']} |"
        )


if __name__ == "__main__":
    main()
