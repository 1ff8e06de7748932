"""Soak: sustained mixed traffic (sync realtime, serverless spillover, async jobs) on the
local stack for --minutes; reports the rate held, latency percentiles, 5xx, memory growth
of every process and jobs lost.

    .venv/bin/python bench/soak.py --minutes 10            # search the highest rate held
    .venv/bin/python bench/soak.py --minutes 10 --rate 40  # or offer a chosen one

The search doubles the offered rate from --search-from in short probes until one fails
(≥ 95% answered, no 5xx, sync p99 inside the 300 ms SLO), bisects three times, and soaks
at 90% of the highest rate that held.
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
from typing import Any

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


SLO_MS = 300.0  # the digits policy's
THREADS = 16


def offer(conn: Any, rate: float, seconds: float) -> tuple[list[tuple[str, int, float]], list[str]]:
    """The mix at ``rate`` requests/s for ``seconds``: (kind, status, ms) per request and
    the async jobs accepted. 80% small sync, 10% 2,000-row batches (saturate realtime,
    spill to serverless), 10% async jobs."""
    headers = {"Authorization": f"Bearer {conn.api_key}"}
    results: list[tuple[str, int, float]] = []
    jobs: list[str] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds
    big = {"inputs": [ROW] * 2000}

    def worker(index: int) -> None:
        interval = THREADS / rate
        with httpx.Client(base_url=conn.gateway_url, headers=headers, timeout=30) as client:
            n = 0
            next_at = time.monotonic() + index * interval / THREADS
            time.sleep(max(0.0, next_at - time.monotonic()))
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

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, jobs


def sync_p(results: list[tuple[str, int, float]], q: float) -> float | None:
    sync = sorted(ms for kind, status, ms in results if kind == "sync" and status == 200)
    return round(sync[min(len(sync) - 1, int(len(sync) * q))], 1) if sync else None


def holds(results: list[tuple[str, int, float]], rate: float, seconds: float) -> bool:
    """Held: ≥ 95% of the offered rate answered, no 5xx, sync p99 inside the SLO."""
    p99 = sync_p(results, 0.99)
    return (
        len(results) >= 0.95 * rate * seconds
        and not any(status >= 500 for _, status, _ in results)
        and p99 is not None
        and p99 <= SLO_MS
    )


def find_rate(conn: Any, start: float, probe_s: float, log: Any) -> tuple[float, list[dict]]:
    """The highest rate of a doubling-then-bisecting search that still holds."""
    probes: list[dict] = []

    def probe(rate: float) -> bool:
        results, _ = offer(conn, rate, probe_s)
        ok = holds(results, rate, probe_s)
        probes.append(
            {
                "rate": rate,
                "held": ok,
                "answered_per_s": round(len(results) / probe_s, 1),
                "sync_p99_ms": sync_p(results, 0.99),
                "five_xx": sum(1 for _, status, _ in results if status >= 500),
            }
        )
        log(f"probe {rate:.0f}/s: {probes[-1]}")
        return ok

    good, bad = 0.0, None
    rate = start
    while bad is None:
        if probe(rate):
            good, rate = rate, rate * 2
        else:
            bad = rate
    for _ in range(3):
        middle = (good + bad) / 2
        if probe(middle):
            good = middle
        else:
            bad = middle
    return good, probes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, help="requests/s offered (default: search)")
    parser.add_argument("--search-from", type=float, default=40.0)
    parser.add_argument("--probe-seconds", type=float, default=20.0)
    parser.add_argument("--json", default="bench/results/soak.json")
    args = parser.parse_args()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

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
        probes: list[dict] = []
        rate = args.rate
        if rate is None:
            rate, probes = find_rate(conn, args.search_from, args.probe_seconds, log)
            # The soak runs a little below the edge the probes found: ten minutes at the
            # very edge measure the edge's noise, not the system.
            rate = round(0.9 * rate, 1)
            log(f"soaking at {rate}/s for {args.minutes} min ...")
        pids = {name: p.pid for name, p in stack._procs}
        for pid in tree(os.getpid()):
            pids.setdefault(f"pid-{pid}", pid)
        memory: dict[str, list[float]] = {name: [] for name in pids}
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(30.0):
                for name, pid in pids.items():
                    memory[name].append(rss_mb(pid))

        sampler = threading.Thread(target=sample, daemon=True)
        start_rss = {name: rss_mb(pid) for name, pid in pids.items()}
        sampler.start()
        results, jobs = offer(conn, rate, args.minutes * 60)
        sampling.set()
        end_rss = {name: rss_mb(pid) for name, pid in pids.items()}
        deadline = time.monotonic() + 120
        pending = set(jobs)
        headers = {"Authorization": f"Bearer {conn.api_key}"}
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
    grown = [k for k in start_rss if start_rss[k] and end_rss[k]]
    summary = {
        "minutes": args.minutes,
        "offered_rate": rate,
        "rate_search": probes,
        "held_rate": round(len(results) / seconds, 1),
        "held": holds(results, rate, seconds),
        "requests": len(results),
        "statuses": dict(Counter(status for _, status, _ in results)),
        "five_xx": sum(1 for _, status, _ in results if status >= 500),
        "sync_p50_ms": sync_p(results, 0.5),
        "sync_p99_ms": sync_p(results, 0.99),
        "slo_ms": SLO_MS,
        "jobs": len(jobs),
        "jobs_lost": lost,
        "rss_growth_mb": {k: round(end_rss[k] - start_rss[k], 1) for k in grown},
        # Growth over the second half only: warm-up (pools, caches) is over by then, so
        # what still grows there is a slope.
        "rss_growth_second_half_mb": {
            k: round(v[-1] - v[len(v) // 2], 1) for k, v in memory.items() if len(v) >= 4
        },
        "median_rss_growth_mb": round(
            statistics.median(end_rss[k] - start_rss[k] for k in grown), 1
        ),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
