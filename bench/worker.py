"""The async worker's rows/s against onnxruntime alone, on the same model and batch size
(goal: the worker at >= 90% of onnxruntime). Three stages, measured side by side:

  (a) onnxruntime alone: the digits model in a session configured like OnnxModel,
      ``session.run`` over N float32 rows in batches of B rows;
  (b) the worker's own code without the network: iter_batches over an in-memory NDJSON
      stream, OnnxModel.predict per batch, OutputWriter NDJSON encoding into a byte sink;
  (c) the real worker end to end on the local stack (moto S3/SQS/DynamoDB, one worker
      process): one job of N NDJSON rows, timed from the job's started_at to finished_at.

    .venv/bin/python bench/worker.py [--rows 200000] [--batch-rows 1024] [--repeats 3]
                                     [--json bench/results/worker.json] [--no-stack]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infergw.demo.models import build_digits, digits_split
from infergw.local import processes
from infergw.local.stack import LocalStack, StackConfig
from model_runtime.onnx_model import OnnxModel, preferred_providers
from model_runtime.streaming import OutputWriter, iter_batches

NDJSON = "application/x-ndjson"
GOAL = 0.9
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "EXPIRED"}


def make_rows(n: int) -> np.ndarray:
    x = digits_split().x_test
    tiled = np.tile(x, (math.ceil(n / len(x)), 1))[:n]
    return np.ascontiguousarray(tiled, dtype=np.float32)


def to_ndjson(rows: np.ndarray) -> bytes:
    # The same encoding a client (and tests/integration/test_async.py) uploads.
    return "\n".join(json.dumps(r) for r in rows.tolist()).encode()


def ort_session(onnx: bytes, threads: int = 1) -> ort.InferenceSession:
    """A session set up exactly as model_runtime.onnx_model.OnnxModel sets up its own."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx, sess_options=options, providers=preferred_providers())


# -- (a) onnxruntime alone ---------------------------------------------------------------
def run_onnxruntime(session: ort.InferenceSession, rows: np.ndarray, batch: int) -> dict:
    name = session.get_inputs()[0].name
    batches = [rows[s : s + batch] for s in range(0, len(rows), batch)]  # views, no copies
    start = time.perf_counter()
    for matrix in batches:
        session.run(None, {name: matrix})
    seconds = time.perf_counter() - start
    return {"rows": len(rows), "seconds": seconds, "rows_per_s": len(rows) / seconds}


# -- (b) the worker's code, in-process ---------------------------------------------------
def _timed(it: Iterator[Any], clock: list[float]) -> Iterator[Any]:
    """Yields from ``it``, adding the time spent inside it to clock[0]."""
    while True:
        start = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            clock[0] += time.perf_counter() - start
            return
        clock[0] += time.perf_counter() - start
        yield item


def run_worker_code(model: OnnxModel, body: bytes, batch: int, timed: bool = True) -> dict:
    """What JobRunner._run does per job, minus S3 and DynamoDB: parse, infer, encode."""
    parse = [0.0]
    infer = encode = 0.0
    out = OutputWriter(NDJSON)
    sink = io.BytesIO()
    done = 0
    start = time.perf_counter()
    batches = iter_batches(io.BytesIO(body), NDJSON, batch, model.info.features)
    for _first, matrix in _timed(batches, parse) if timed else batches:
        t0 = time.perf_counter()
        predictions = model.predict(matrix)
        t1 = time.perf_counter()
        sink.write(out.batch(predictions))
        encode += time.perf_counter() - t1
        infer += t1 - t0
        done += len(matrix)
    sink.write(out.end())
    seconds = time.perf_counter() - start
    return {
        "rows": done,
        "seconds": seconds,
        "rows_per_s": done / seconds,
        "output_bytes": sink.tell(),
        "share": {
            "parse": parse[0] / seconds,
            "predict": infer / seconds,
            "encode": encode / seconds,
        },
    }


def profile_worker_code(model: OnnxModel, body: bytes, batch: int, top: int = 10) -> list[dict]:
    profiler = cProfile.Profile()
    profiler.runcall(run_worker_code, model, body, batch, timed=False)
    stats = pstats.Stats(profiler)
    entries = []
    for (path, line, func), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if path == __file__:
            continue  # the harness itself tells nothing
        where = "~" if path == "~" else f"{Path(path).name}:{line}"
        entries.append(
            {
                "function": f"{func} ({where})",
                "calls": calls,
                "tottime_s": round(tottime, 3),
                "cumtime_s": round(cumtime, 3),
            }
        )
    entries.sort(key=lambda e: e["cumtime_s"], reverse=True)
    return entries[:top]


# -- (c) the real worker on the local stack ----------------------------------------------
def wait_for(http: httpx.Client, job_id: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s:.0f} s")
        time.sleep(0.1)


def submit(http: httpx.Client, body: bytes) -> str:
    created = http.post("/v1/models/digits/jobs", json={"content_type": NDJSON, "accept": NDJSON})
    created.raise_for_status()
    ticket = created.json()
    form = ticket["upload"]
    uploaded = httpx.post(
        form["url"], data=form["fields"], files={"file": ("input", body)}, timeout=300
    )
    uploaded.raise_for_status()
    return str(ticket["job_id"])


def run_stack_jobs(body: bytes, rows: int, batch: int, repeats: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as state:
        config = StackConfig(
            state_dir=Path(state),
            gateway_port=processes.free_port(),
            aws_port=processes.free_port(),
            endpoint_port=processes.free_port(),
            workers=1,
            worker_args=(*StackConfig.worker_args, "--batch-rows", str(batch)),
        )
        started = time.monotonic()
        with LocalStack(config, report=lambda _: None) as stack:
            assert stack.connection is not None
            print(f"local stack up in {time.monotonic() - started:.1f} s", file=sys.stderr)
            with httpx.Client(
                base_url=stack.connection.gateway_url,
                headers={"Authorization": f"Bearer {stack.connection.api_key}"},
                timeout=60,
            ) as http:
                # Warm-up: the worker loads the model from S3 on its first job.
                warm = wait_for(http, submit(http, body[: body.index(b"\n")]), 60)
                if warm["status"] != "COMPLETED":
                    raise RuntimeError(f"warm-up job did not complete: {warm}")
                runs = []
                for _ in range(repeats):
                    t0 = time.monotonic()
                    job_id = submit(http, body)
                    upload_s = time.monotonic() - t0
                    uploaded_at = time.time()
                    job = wait_for(http, job_id, 600)
                    if job["status"] != "COMPLETED":
                        raise RuntimeError(f"job {job_id} did not complete: {job}")
                    done = job["progress"]["records_done"]
                    if done != rows:
                        raise RuntimeError(f"job {job_id} did {done} rows, not {rows}")
                    t = job["timings"]
                    seconds = t["finished_at"] - t["started_at"]
                    runs.append(
                        {
                            "job_id": job_id,
                            "rows": done,
                            "seconds": seconds,
                            "rows_per_s": done / seconds,
                            "upload_s": upload_s,
                            "uploaded_to_started_s": t["started_at"] - uploaded_at,
                        }
                    )
            dead = stack.dead()
            if dead:
                raise RuntimeError(f"stack processes died during the run: {dead}")
    return runs


# -- report ------------------------------------------------------------------------------
def median_of(runs: list[dict]) -> dict:
    rates = [r["rows_per_s"] for r in runs]
    return {"rows_per_s": statistics.median(rates), "min": min(rates), "max": max(rates)}


def bottleneck(a: float, b: float, c: float | None, share: dict[str, float]) -> str:
    worst = min(("(b)", b), ("(c)", c if c is not None else math.inf), key=lambda s: s[1])
    stage_share = ", ".join(f"{k} {v:.0%}" for k, v in share.items())
    if b / a < GOAL:
        text = (
            f"bottleneck: the worker's own Python code, not inference - (b) runs at {b / a:.1%} "
            f"of onnxruntime alone; of (b)'s time: {stage_share}"
        )
        if c is not None:
            text += (
                f"; S3/DynamoDB I/O on the emulator costs a further {1 - c / b:.0%} "
                f"((c)/(b) = {c / b:.2f})"
                if c < b
                else f"; (c) keeps up with (b) ((c)/(b) = {c / b:.2f}), so I/O is not the limit"
            )
        return text
    if c is not None and worst[0] == "(c)" and c / a < GOAL:
        return (
            f"bottleneck: I/O around the worker's code (S3 streaming, multipart upload, "
            f"DynamoDB progress on the emulator) - (c)/(b) = {c / b:.2f}"
        )
    return "no bottleneck below the goal: every stage runs at >= 90% of onnxruntime alone"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-rows", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-stack", action="store_true", help="skip (c), the local stack")
    parser.add_argument("--json", default="bench/results/worker.json")
    args = parser.parse_args()
    n, batch = args.rows, args.batch_rows

    built = build_digits()
    rows = make_rows(n)
    body = to_ndjson(rows)
    session = ort_session(built.onnx)
    model = OnnxModel(built.onnx, name="digits", version="1", intra_op_threads=1)
    run_onnxruntime(session, rows[: 10 * batch], batch)  # warm-up: first-run allocations
    run_worker_code(model, body[: body.index(b"\n", len(body) // 20)], batch)

    runs_a, runs_b = [], []
    for i in range(args.repeats):
        runs_a.append(run_onnxruntime(session, rows, batch))
        runs_b.append(run_worker_code(model, body, batch))
        print(
            f"repeat {i + 1}: (a) {runs_a[-1]['rows_per_s']:,.0f} rows/s, "
            f"(b) {runs_b[-1]['rows_per_s']:,.0f} rows/s",
            file=sys.stderr,
        )
    runs_c = [] if args.no_stack else run_stack_jobs(body, n, batch, args.repeats)

    a = median_of(runs_a)
    b = median_of(runs_b)
    c = median_of(runs_c) if runs_c else None
    share = {k: statistics.median(r["share"][k] for r in runs_b) for k in runs_b[0]["share"]}
    ratios = {"b_over_a": b["rows_per_s"] / a["rows_per_s"]}
    if c is not None:
        ratios["c_over_a"] = c["rows_per_s"] / a["rows_per_s"]
        ratios["c_over_b"] = c["rows_per_s"] / b["rows_per_s"]
    verdict = bottleneck(a["rows_per_s"], b["rows_per_s"], c["rows_per_s"] if c else None, share)
    profile = profile_worker_code(model, body, batch) if ratios["b_over_a"] < GOAL else []

    result = {
        "machine": os.uname().machine,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers": list(session.get_providers()),
        "rows": n,
        "batch_rows": batch,
        "input_bytes": len(body),
        "repeats": args.repeats,
        "goal_ratio": GOAL,
        "stages": {
            "a_onnxruntime_alone": {**a, "runs": runs_a},
            "b_worker_code_in_process": {**b, "time_share": share, "runs": runs_b},
            "c_worker_end_to_end": {**c, "runs": runs_c} if c else None,
        },
        "ratios": ratios,
        "bottleneck": verdict,
        "profile_b_top10_cumulative": profile,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"\n{n:,} rows, batches of {batch}, median of {args.repeats} "
        f"({os.uname().machine}, {os.cpu_count()} CPUs)\n"
    )
    print("| stage | rows/s (median) | min - max | vs (a) |")
    print("|---|---|---|---|")
    table = [("(a) onnxruntime alone", a), ("(b) worker code, in-process", b)]
    if c is not None:
        table.append(("(c) worker end to end, local stack", c))
    for label, stage in table:
        print(
            f"| {label} | {stage['rows_per_s']:,.0f} | {stage['min']:,.0f} - "
            f"{stage['max']:,.0f} | {stage['rows_per_s'] / a['rows_per_s']:.1%} |"
        )
    print()
    goal_text = "meets" if ratios.get("c_over_a", ratios["b_over_a"]) >= GOAL else "misses"
    print(
        f"(b)/(a) = {ratios['b_over_a']:.3f}"
        + (f", (c)/(a) = {ratios['c_over_a']:.3f}" if c else "")
        + f": {goal_text} the >= {GOAL:.0%} goal"
    )
    print(verdict)
    if profile:
        print(
            f"\ncProfile of one (b) run, top {len(profile)} by cumulative time (profiling "
            "inflates per-call costs; the unprofiled split above is the reliable one):\n"
        )
        print("| function | calls | tottime s | cumtime s |")
        print("|---|---|---|---|")
        for e in profile:
            print(f"| {e['function']} | {e['calls']:,} | {e['tottime_s']} | {e['cumtime_s']} |")


if __name__ == "__main__":
    main()
