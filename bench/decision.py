"""The decision path in-process, no network: authorize (cached API key) -> limit (leased
token buckets, local) -> route (live state + policy) for one request. Reports median and
p99 microseconds per decision and decisions per second on one core.

    .venv/bin/python bench/decision.py [--n 200000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.admission import Admission
from gateway.auth import ApiKeyAuthenticator
from gateway.live import LiveState
from gateway.models import ModelPolicy, Tier
from gateway.ratelimit import LeasedLimiter
from gateway.routing import SYNC_ORDER, RequestFacts, pick_variant, plan, targets_for
from gateway.values import Backend
from tests.fakes import InMemoryKeyStore, InMemoryLimitStore, issue_key

POLICY = ModelPolicy.model_validate(
    {
        "model": "digits",
        "slo_ms": 300,
        "async_enabled": True,
        "realtime": {"endpoint_name": "rt", "capacity": 8, "expected_latency_ms": 5},
        "serverless": {
            "endpoint_name": "sl",
            "capacity": 4,
            "idle_timeout_s": 60,
            "cold_start_ms": 1500,
        },
        "variants": [
            {"name": "a", "version": "1", "weight": 90},
            {"name": "b", "version": "2", "weight": 10},
        ],
    }
)
TIER = {
    "standard": Tier.model_validate(
        {"key": {"rate_per_s": 1e6, "burst": 10**7}, "tenant": {"rate_per_s": 1e6, "burst": 10**7}}
    )
}


def run(n: int) -> list[float]:
    keys = InMemoryKeyStore()
    key, _ = issue_key(keys, tenant="bench", scopes=["invoke"])
    authenticator = ApiKeyAuthenticator(keys)
    admission = Admission(LeasedLimiter(InMemoryLimitStore(), max_batch=100_000), TIER)
    live = LiveState()
    header = f"Bearer {key}"
    samples = []
    clock = time.perf_counter_ns
    for i in range(n):
        started = clock()
        principal = authenticator.authenticate(header)
        ticket = admission.admit(principal, POLICY)
        variant = pick_variant(POLICY, f"caller-{i & 1023}", None)
        targets = targets_for(POLICY, variant)
        views = {b: live.view(t) for b in SYNC_ORDER if (t := targets.of(b)) is not None}
        decision = plan(RequestFacts(2048, 300.0), POLICY, targets, views)[0]
        ticket.release()
        samples.append((clock() - started) / 1000)
        assert decision.backend is Backend.REALTIME
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="bench/results/decision.json")
    args = parser.parse_args()
    run(5_000)  # warm caches and the limiter's first lease
    rounds = []
    for _ in range(args.repeats):
        samples = sorted(run(args.n))
        rounds.append(
            {
                "median_us": samples[len(samples) // 2],
                "p99_us": samples[int(len(samples) * 0.99)],
                "per_s": 1e6 / statistics.fmean(samples),
            }
        )
    result = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "machine": os.uname().machine,
                "cpus": os.cpu_count(),
                "n": args.n,
                "repeats": args.repeats,
                **result,
            },
            indent=2,
        )
    )
    print("| decision path (authorize, limit, route) | median | p99 | decisions/s on one core |")
    print("|---|---|---|---|")
    print(
        f"| in-process | {result['median_us']:.1f} µs | {result['p99_us']:.1f} µs | "
        f"{result['per_s']:,.0f} |"
    )


if __name__ == "__main__":
    main()
