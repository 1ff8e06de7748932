"""Lambda cold start, as this machine can measure it: each handler's module imported in a
fresh Python process, then its first request served (clients created, stores wired, the
request built, signed and answered), then a second one, and the process's peak memory.
Medians of --repeats fresh processes.

    .venv/bin/python bench/cold_start.py [--repeats 7] [--from-source]

No network: AWS is answered in-process (bench/first_call.py). The API function's first
request is an invocation (``POST /v1/models/{model}/invocations`` to a SageMaker realtime
endpoint, rate-limited, usage recorded), the authorizer's a valid API key, the sweeper's an
empty sweep; the second call shows how much of the first was the cold start's.

Bytecode: by default every module is loaded from a .pyc (written to a private cache by one
untimed run first), as from a deployment package with compiled bytecode. With
--from-source, only the standard library has bytecode and everything the package ships
(our code, botocore, pydantic, powertools) is compiled at import, as from a package without
__pycache__ in Lambda's read-only /var/task. The figures are an upper bound for Lambda's
arm64 runtime only in so far as this machine is slower.

This machine's speed moves with its neighbours by half or more within minutes, so every
probe also times a fixed reference workload (bench/first_call.py's ``reference_ms``: what
an import from bytecode does, on the same synthetic module each time). Each handler's cold
start is also given in multiples of that reference, the median of the probes' own ratios: a
figure that compares across runs where milliseconds do not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_API_MS = 250.0

# What each handler does at cold start: import its module (the template's Handler), then
# serve a request. bench/first_call.py (stdlib only) is imported before the clock starts;
# its AWS answers are installed on the session every client is created from.
_CONTEXT = "first_call.LambdaContext()"
HANDLERS = {
    "api": (
        "import functions.api.app",
        "first_call.check(functions.api.app.handler("
        f"first_call.invocation_event(), {_CONTEXT}), statusCode=200)",
    ),
    "authorizer": (
        "import functions.authorizer.app",
        "first_call.check(functions.authorizer.app.handler("
        f"first_call.authorizer_event(), {_CONTEXT}), isAuthorized=True)",
    ),
    "sweeper": (
        "import functions.sweeper.app",
        f"first_call.check(functions.sweeper.app.handler({{}}, {_CONTEXT}), expired=0)",
    ),
}
_ANSWER_AWS = "from gateway.adapters import aws; first_call.answer_aws(aws.session())"

# 11-12 ms here at the machine's quickest: long enough to measure, short beside a cold start.
REFERENCE_TIMES = 10
PROBE = """
import resource, time, json
from bench import first_call
t0 = time.perf_counter()
{imports}
t1 = time.perf_counter()
{answer_aws}
{call}
t2 = time.perf_counter()
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
{call}
t3 = time.perf_counter()
# Last, so that it adds nothing to the handler's peak memory.
reference_ms = first_call.reference_ms({reference_times})
print(json.dumps({{"import_ms": (t1 - t0) * 1000, "first_call_ms": (t2 - t1) * 1000,
                   "second_call_ms": (t3 - t2) * 1000, "peak_mb": peak_kb / 1024,
                   "reference_ms": reference_ms}}))
"""
KEYS = (
    "import_ms",
    "first_call_ms",
    "total_ms",
    "second_call_ms",
    "peak_mb",
    "reference_ms",
    "total_over_reference",
)

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
    "PYDANTIC_DISABLE_PLUGINS": "__all__",  # as template.yaml sets it
}


def packaged_botocore() -> Path:
    """The venv's botocore as the Lambda package ships it (infergw/lambda_package.py:
    only the services the functions call), in a directory put first on PYTHONPATH."""
    site = Path(tempfile.mkdtemp(prefix="cold-start-site-"))
    # In a child: imported here, the package would raise the peak memory every probe
    # inherits from this process.
    subprocess.run(
        [sys.executable, str(ROOT / "infergw" / "lambda_package.py"), "--copy-installed", site],
        check=True,
        capture_output=True,
    )
    return site


def once(
    imports: str, call: str, pycache: str, site: Path, write_bytecode: bool = False
) -> dict[str, float]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "INFERGW_", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH"))
    }
    env.update(ENV, PYTHONPYCACHEPREFIX=pycache, PYTHONPATH=str(site))
    if not write_bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    probe = PROBE.format(
        imports=imports, answer_aws=_ANSWER_AWS, call=call, reference_times=REFERENCE_TIMES
    )
    started = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if started.returncode != 0:
        raise SystemExit(f"probe failed:\n{started.stdout}{started.stderr}")
    result: dict[str, float] = json.loads(started.stdout.strip().splitlines()[-1])
    # The goal is on the sum: its median, not the sum of two medians.
    result["total_ms"] = result["import_ms"] + result["first_call_ms"]
    result["total_over_reference"] = result["total_ms"] / result["reference_ms"]
    return result


def bytecode_cache(from_source: bool, site: Path) -> str:
    """A private bytecode cache: every module's .pyc, or (``from_source``) the standard
    library's only."""
    pycache = tempfile.mkdtemp(prefix="cold-start-pyc-")
    for imports, call in HANDLERS.values():  # untimed: writes the .pyc of all they load
        once(imports, call, pycache, site, write_bytecode=True)
    if from_source:
        shipped = {ROOT, site, *(Path(sysconfig.get_path(p)) for p in ("purelib", "platlib"))}
        for tree in shipped:
            shutil.rmtree(Path(pycache) / tree.relative_to(tree.anchor), ignore_errors=True)
    return pycache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--from-source",
        action="store_true",
        help="no bytecode but the standard library's (a package without __pycache__)",
    )
    parser.add_argument("--json", default="bench/results/cold_start.json")
    args = parser.parse_args()
    site = packaged_botocore()
    pycache = bytecode_cache(args.from_source, site)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in HANDLERS}
    try:
        for _ in range(args.repeats):  # interleaved: a busy spell hits every handler alike
            for name, (imports, call) in HANDLERS.items():
                runs[name].append(once(imports, call, pycache, site))
    finally:
        shutil.rmtree(pycache, ignore_errors=True)
        shutil.rmtree(site, ignore_errors=True)
    summary = {
        name: {key: round(statistics.median(r[key] for r in results), 1) for key in KEYS}
        for name, results in runs.items()
    }
    api_total = summary["api"]["total_ms"]
    met = api_total <= GOAL_API_MS
    bytecode = "standard library only" if args.from_source else "every module"
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "repeats": args.repeats,
                "bytecode": bytecode,
                "summary": summary,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"Bytecode: {bytecode}; medians of {args.repeats} fresh processes.\n")
    print(
        "| handler | import | first call | import + first call | in references "
        "| second call | peak memory |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(
            f"| {name} | {s['import_ms']:.0f} ms | {s['first_call_ms']:.0f} ms "
            f"| {s['total_ms']:.0f} ms | {s['total_over_reference']:.1f} "
            f"| {s['second_call_ms']:.1f} ms | {s['peak_mb']:.0f} MB |"
        )
    references = [r["reference_ms"] for results in runs.values() for r in results]
    print(
        f"\nThe reference workload (the same in every probe) took {min(references):.1f} to "
        f"{max(references):.1f} ms, median {statistics.median(references):.1f} ms: how fast "
        "this machine was meanwhile."
    )
    print(
        f"API function import + first call: {api_total:.0f} ms "
        f"(goal <= {GOAL_API_MS:.0f} ms): {'met' if met else 'not met'}"
    )


if __name__ == "__main__":
    main()
