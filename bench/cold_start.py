"""Lambda cold start, as this machine can measure it: each handler imported and wired in a
fresh Python process (import time, then the first call's wiring: botocore clients, stores,
caches), and the process's peak memory. Medians of --repeats fresh processes.

    .venv/bin/python bench/cold_start.py [--repeats 7]

No network: wiring creates clients but calls nothing. The figures are an upper bound for
Lambda's arm64 runtime only in so far as this machine is slower; they are measured side by
side against a bare `python -c pass` so that the interpreter's own start is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_API_MS = 250.0

# What each handler does at cold start: import its module, then wire what its first request
# needs (the same calls its handler makes).
HANDLERS = {
    "python (bare interpreter)": ("", ""),
    "api": ("import functions.api.app", "from functions import bootstrap; bootstrap.services()"),
    "authorizer": (
        "import functions.authorizer.app",
        "from functions import bootstrap; bootstrap.authenticator()",
    ),
    "sweeper": ("import functions.sweeper.app", ""),
}

PROBE = """
import resource, time, json
t0 = time.perf_counter()
{imports}
t1 = time.perf_counter()
{wiring}
t2 = time.perf_counter()
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"import_ms": (t1 - t0) * 1000, "wiring_ms": (t2 - t1) * 1000,
                   "peak_mb": peak_kb / 1024}}))
"""

# The environment a deployed function has: table and bucket names, a region, no endpoint.
ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "cold-start-bench",
    "AWS_SECRET_ACCESS_KEY": "cold-start-bench",
    "INFERGW_POLICIES_TABLE": "policies",
    "INFERGW_KEYS_TABLE": "keys",
    "INFERGW_LIMITS_TABLE": "limits",
    "INFERGW_USAGE_TABLE": "usage",
    "INFERGW_JOBS_TABLE": "jobs",
    "INFERGW_BUCKET": "bucket",
    "POWERTOOLS_METRICS_DISABLED": "true",
}


def once(imports: str, wiring: str) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "INFERGW_"))}
    env.update(ENV)
    started = subprocess.run(
        [sys.executable, "-c", PROBE.format(imports=imports, wiring=wiring)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, float] = json.loads(started.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default="bench/results/cold_start.json")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in HANDLERS}
    for _ in range(args.repeats):  # interleaved: a busy spell hits every handler alike
        for name, (imports, wiring) in HANDLERS.items():
            runs[name].append(once(imports, wiring))
    summary = {
        name: {
            key: round(statistics.median(r[key] for r in results), 1)
            for key in ("import_ms", "wiring_ms", "peak_mb")
        }
        for name, results in runs.items()
    }
    api = summary["api"]
    met = api["import_ms"] + api["wiring_ms"] <= GOAL_API_MS
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps({"repeats": args.repeats, "summary": summary, "runs": runs}, indent=2) + "\n"
    )
    print("| handler | import | wiring | import + wiring | peak memory |")
    print("|---|---|---|---|---|")
    for name, s in summary.items():
        total = s["import_ms"] + s["wiring_ms"]
        print(
            f"| {name} | {s['import_ms']:.0f} ms | {s['wiring_ms']:.0f} ms | {total:.0f} ms "
            f"| {s['peak_mb']:.0f} MB |"
        )
    print(
        f"\nAPI function import + wiring: {api['import_ms'] + api['wiring_ms']:.0f} ms "
        f"(goal <= {GOAL_API_MS:.0f} ms): {'met' if met else 'not met'}"
    )


if __name__ == "__main__":
    main()
