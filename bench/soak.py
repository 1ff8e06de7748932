"""Soak: sustained mixed traffic (sync realtime, serverless spillover, async jobs) on the
local stack for --minutes; reports the rate held, latency percentiles, 5xx, memory growth
of every process and jobs lost.

    .venv/bin/python bench/soak.py --minutes 10 --rate 40
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infergw.local import processes
from infergw.local.stack import LocalStack, StackConfig

ROW = [float(v % 16) for v in range(64)]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests/s offered in total")
    parser.add_argument("--json", default="bench/results/soak.json")
    args = parser.parse_args()
    config = StackConfig(
        state_dir=Path(tempfile.mkdtemp()),
        gateway_port=processes.free_port(),
        aws_port=processes.free_port(),
        endpoint_port=processes.free_port(),
        workers=2,
    )
    with LocalStack(config, report=lambda _: None) as stack:
        conn = stack.connection
        assert conn is not None
        pids = {name: p.pid for name, p in stack._procs}
        for pid in tree(os.getpid()):
            pids.setdefault(f"pid-{pid}", pid)
        headers = {"Authorization": f"Bearer {conn.api_key}"}
        results: list[tuple[str, int, float]] = []
        jobs: list[str] = []
        lock = threading.Lock()
        end = time.monotonic() + args.minutes * 60
        start_rss = {name: rss_mb(pid) for name, pid in pids.items()}
        # The mix: 80% small sync, 10% large batches (saturate realtime, spill to
        # serverless), 10% async jobs.
        big = {"inputs": [ROW] * 2000}

        def worker(index: int) -> None:
            interval = 4 / args.rate
            with httpx.Client(base_url=conn.gateway_url, headers=headers, timeout=30) as client:
                n = 0
                next_at = time.monotonic()
                while time.monotonic() < end:
                    n += 1
                    kind = "async" if n % 10 == index % 10 else "big" if n % 10 == 5 else "sync"
                    started = time.monotonic()
                    try:
                        if kind == "async":
                            r = client.post(
                                "/v1/models/digits/invocations",
                                json={"inputs": [ROW] * 10},
                                headers={"Prefer": "respond-async"},
                            )
                            if r.status_code == 202:
                                with lock:
                                    jobs.append(r.json()["job_id"])
                        else:
                            r = client.post(
                                "/v1/models/digits/invocations",
                                json=big if kind == "big" else {"inputs": [ROW]},
                            )
                        status = r.status_code
                    except httpx.HTTPError:
                        status = 599
                    with lock:
                        results.append((kind, status, (time.monotonic() - started) * 1000))
                    next_at += interval
                    time.sleep(max(0.0, next_at - time.monotonic()))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        end_rss = {name: rss_mb(pid) for name, pid in pids.items()}
        lost = 0
        deadline = time.monotonic() + 120
        pending = set(jobs)
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                status = httpx.get(f"{conn.gateway_url}/v1/jobs/{job_id}", headers=headers).json()[
                    "status"
                ]
                if status in ("COMPLETED", "FAILED"):
                    pending.discard(job_id)
            time.sleep(1)
        lost = len(pending)
    seconds = args.minutes * 60
    sync = sorted(ms for kind, status, ms in results if kind == "sync" and status == 200)
    summary = {
        "minutes": args.minutes,
        "offered_rate": args.rate,
        "held_rate": round(len(results) / seconds, 1),
        "requests": len(results),
        "statuses": dict(Counter(status for _, status, _ in results)),
        "five_xx": sum(1 for _, status, _ in results if status >= 500),
        "sync_p50_ms": round(sync[len(sync) // 2], 1) if sync else None,
        "sync_p99_ms": round(sync[int(len(sync) * 0.99)], 1) if sync else None,
        "jobs": len(jobs),
        "jobs_lost": lost,
        "rss_growth_mb": {
            k: round(end_rss[k] - start_rss[k], 1) for k in start_rss if start_rss[k] and end_rss[k]
        },
        "median_rss_growth_mb": round(
            statistics.median(
                end_rss[k] - start_rss[k] for k in start_rss if start_rss[k] and end_rss[k]
            ),
            1,
        ),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
