"""Model execution with and without dynamic batching: the model server (digits, one row per
request) started once per mode (batching off, on; optionally on-thread: every batch in the
worker thread), each driven by wrk at the same concurrency (8 and 32) in interleaved rounds.
Reports requests/s, p50 and p99 (medians of the rounds), the model server's CPU time per
request, the mean batch size, and each mode's ratio to 'off' (the median of the rounds'
ratios: each round runs the modes back to back).

    .venv/bin/python bench/model_server.py [--quick] [--rounds 5] [--seconds 5]
        [--modes off,on,on-thread] [--batch-max-rows 32] [--batch-delay-ms 0]

Needs wrk on PATH (Debian: apt-get install wrk). Everything listens on 127.0.0.1 on free
ports; every subprocess has a deadline. The wrk driver, CPU accounting and retry-on-contention
logic are bench/gateway.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

# The project root goes first: `python bench/model_server.py` puts bench/ on sys.path too,
# where this file would shadow the project's `model_server` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infergw.demo.models import build_digits, digits_split
from infergw.local import processes

ROOT = Path(__file__).resolve().parents[1]


def _load_gateway_bench() -> ModuleType:
    """bench/gateway.py, imported by path: bench/ is not a package."""
    spec = importlib.util.spec_from_file_location("bench_gateway", ROOT / "bench" / "gateway.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


gw = _load_gateway_bench()

READY_TIMEOUT_S = 60.0
STATS_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Server:
    mode: str
    url: str
    pid: int
    args: tuple[str, ...]


@contextlib.contextmanager
def model_server(
    mode: str, model_file: Path, batch_args: list[str], workdir: Path
) -> Iterator[Server]:
    port = processes.free_port()
    args = [
        "-m",
        "model_server",
        "--model-uri",
        str(model_file),
        "--name",
        "digits",
        "--port",
        str(port),
        *batch_args,
    ]
    proc = processes.spawn(args, log=str(workdir / f"model-server-{mode}.log"))
    url = f"http://127.0.0.1:{port}"
    try:
        processes.wait_until_ready(url + "/ping", proc, timeout_s=READY_TIMEOUT_S)
        yield Server(mode, url, proc.pid, tuple(batch_args))
    finally:
        processes.stop([proc], timeout_s=10)


def batching_stats(server: Server) -> dict[str, Any]:
    return dict(httpx.get(server.url + "/batching", timeout=STATS_TIMEOUT_S).json())


def run_once(
    server: Server,
    concurrency: int,
    args: argparse.Namespace,
    body_file: Path,
    budget: Any,
) -> dict[str, Any]:
    """One measured wrk run (after a warm-up, re-measured if another job overlapped it),
    with the server's CPU per request and the batches it formed meanwhile."""
    target = gw.Target(server.mode, server.url + "/invocations")
    meter = gw.CpuMeter({"model-server": server.pid})
    before = batching_stats(server)
    result: dict[str, Any] = gw.measure(target, concurrency, args, body_file, meter, budget)
    after = batching_stats(server)
    # The batches of the warm-up(s) count too: the server cannot tell them apart.
    batches = after.get("batches", 0) - before.get("batches", 0)
    requests = after.get("requests", 0) - before.get("requests", 0)
    result["batching"] = {
        "enabled": after["enabled"],
        "batches": batches,
        "requests": requests,
        "failed_batches": after.get("failed_batches", 0) - before.get("failed_batches", 0),
        "mean_requests_per_batch": round(requests / batches, 2) if batches else None,
    }
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = gw.median_of(runs)
    sizes = [
        r["batching"]["mean_requests_per_batch"]
        for r in runs
        if r["batching"]["mean_requests_per_batch"] is not None
    ]
    summary["mean_requests_per_batch"] = statistics.median(sizes) if sizes else None
    summary["server_cpu_ms_per_request"] = summary["cpu_ms_per_request"].get("model-server")
    return summary


def _figures(run: dict[str, Any]) -> dict[str, float | None]:
    return {
        "requests_per_s": run["requests_per_s"],
        "p50_ms": run["p50_us"] / 1000,
        "p99_ms": run["p99_us"] / 1000,
        "server_cpu_ms_per_request": run.get("cpu", {})
        .get("ms_per_request", {})
        .get("model-server"),
    }


def ratios(mode: list[dict[str, Any]], off: list[dict[str, Any]]) -> dict[str, float | None]:
    """Median over rounds of each round's ratio: a mode and 'off' ran back to back in a
    round, so a change in the machine's other load between rounds cancels out."""
    pairs = [(_figures(m), _figures(o)) for m, o in zip(mode, off, strict=True)]

    def ratio(key: str) -> float | None:
        values = [a / b for m, o in pairs if (a := m[key]) is not None and (b := o[key])]
        return round(statistics.median(values), 3) if values else None

    return {key: ratio(key) for key in _figures(off[0])} if off else {}


def mode_args(args: argparse.Namespace) -> dict[str, list[str]]:
    on = [
        "--batch-max-rows",
        str(args.batch_max_rows),
        "--batch-delay-ms",
        str(args.batch_delay_ms),
    ]
    return {
        "off": ["--batch-max-rows", "1"],
        "on": on,
        # Every batch in the worker thread (the server's default runs small ones inline).
        "on-thread": [*on, "--batch-inline-rows", "0"],
    }


def print_report(
    summary: dict[str, dict[int, dict[str, Any]]],
    over_off: dict[str, dict[int, dict[str, float | None]]],
    servers: dict[str, Server],
    idle_busy: float,
) -> None:
    def fmt(value: float | None, spec: str) -> str:
        return "" if value is None else format(value, spec)

    for server in servers.values():
        print(f"- {server.mode}: `python -m model_server {' '.join(server.args)}`")
    print()
    print(
        "| c | batching | requests/s | p50 ms | p99 ms | server CPU ms/req "
        "| requests/batch | errors |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for c in sorted(summary["off"]):
        for mode, by_c in summary.items():
            s = by_c[c]
            print(
                f"| {c} | {mode} | {s['requests_per_s']:,.0f} | {s['p50_ms']:.2f} | "
                f"{s['p99_ms']:.2f} | {fmt(s['server_cpu_ms_per_request'], '.3f')} | "
                f"{fmt(s['mean_requests_per_batch'], '.1f')} | {s['errors']} |"
            )
        for mode, by_c in over_off.items():
            r = by_c[c]
            print(
                f"| {c} | **{mode}/off** | **{fmt(r['requests_per_s'], '.2f')}** | "
                f"{fmt(r['p50_ms'], '.2f')} | **{fmt(r['p99_ms'], '.2f')}** | "
                f"{fmt(r['server_cpu_ms_per_request'], '.2f')} | | |"
            )
    print()
    print(
        "- mode/off rows: the median of the rounds' ratios (each round runs the modes back "
        "to back); the other rows: medians of the rounds."
    )
    if idle_busy > 0.10:
        print(
            f"- WARNING: the machine was {100 * idle_busy:.0f}% busy before any load of ours "
            "(another job): absolute figures are low; the ratios to 'off' are what compare."
        )
    contended = sum(s["contended_runs"] for by_c in summary.values() for s in by_c.values())
    if contended:
        print(
            f"- {contended} measured run(s) overlapped another job even after re-measuring "
            "(see 'contended' in the JSON): compare the ratios, measured side by side."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--seconds", type=int, default=5, help="each measured wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="wrk warm-up before each run")
    parser.add_argument("--concurrency", default="8,32")
    parser.add_argument(
        "--modes", default="off,on", help="off, on, on-thread (batches always in the thread)"
    )
    parser.add_argument("--batch-max-rows", type=int, default=32)
    parser.add_argument("--batch-delay-ms", type=float, default=0.0)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 s: under a minute")
    parser.add_argument(
        "--retries", type=int, default=1, help="re-measure a run another job overlapped"
    )
    parser.add_argument(
        "--retry-budget", type=float, default=30.0, help="seconds in all to wait for quiet"
    )
    parser.add_argument("--json", default=str(ROOT / "bench/results/model_server.json"))
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.retries = 3, 2, 0
    if args.batch_max_rows <= 1:
        parser.error("--batch-max-rows must be > 1: the 'on' server has to batch")
    concurrency = [int(c) for c in args.concurrency.split(",")]
    known = mode_args(args)
    modes = [m for m in args.modes.split(",") if m]
    if "off" not in modes or set(modes) - set(known):
        parser.error(f"--modes: 'off' and any of {sorted(known)}")
    if shutil.which("wrk") is None:
        sys.exit("needs wrk on PATH (Debian: apt-get install -y wrk)")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.monotonic()
    body = json.dumps({"inputs": [digits_split().x_test[0].tolist()]}).encode()
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {
        m: {c: [] for c in concurrency} for m in modes
    }
    with tempfile.TemporaryDirectory(prefix="bench-model-server-") as tmp:
        workdir = Path(tmp)
        model_file = workdir / "digits.onnx"
        model_file.write_bytes(build_digits().onnx)
        body_file = workdir / "body.json"
        body_file.write_bytes(body)
        with contextlib.ExitStack() as stack:
            servers = {
                m: stack.enter_context(model_server(m, model_file, known[m], workdir))
                for m in modes
            }
            for server in servers.values():
                answer = gw.check(gw.Target(server.mode, server.url + "/invocations"), body)
                log(f"check {server.mode}: {answer}; /batching {batching_stats(server)}")
            budget = gw.RetryBudget(args.retry_budget)
            idle_busy = gw.machine_busy_over(2.0)
            log(f"machine busy before any load: {100 * idle_busy:.0f}%")
            step = 0
            for r in range(args.rounds):
                for c in concurrency:
                    # A different mode goes first each time, so that drift in the machine's
                    # load favours none.
                    order = modes[step % len(modes) :] + modes[: step % len(modes)]
                    step += 1
                    for mode in order:
                        result = run_once(servers[mode], c, args, body_file, budget)
                        runs[mode][c].append(result)
                        flag = f" ERRORS {result['errors']}" if result["error_total"] else ""
                        if result["contended"]:
                            flag += f" (contended: other {result['cpu']['cores']['other']})"
                        size = result["batching"]["mean_requests_per_batch"]
                        log(
                            f"round {r + 1}/{args.rounds} c={c:<2} {mode:<9} "
                            f"p50 {result['p50_us'] / 1000:6.2f} ms  "
                            f"p99 {result['p99_us'] / 1000:6.2f} ms  "
                            f"{result['requests_per_s']:8,.0f} req/s"
                            + (f"  {size} req/batch" if size else "")
                            + flag
                        )

    summary = {m: {c: summarize(runs[m][c]) for c in concurrency} for m in modes}
    over_off = {
        m: {c: ratios(runs[m][c], runs["off"][c]) for c in concurrency} for m in modes if m != "off"
    }
    result = {
        **gw.machine(),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warmup_seconds": args.warmup,
        "concurrency": concurrency,
        "wrk_threads": {str(c): min(c, 2) for c in concurrency},
        "body_bytes": len(body),
        "model": "digits (64 features, one row per request)",
        "server_args": {m: s.args for m, s in servers.items()},
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine_busy_idle": round(idle_busy, 3),
        "summary": {m: {str(c): s for c, s in by_c.items()} for m, by_c in summary.items()},
        "over_off": {m: {str(c): v for c, v in by_c.items()} for m, by_c in over_off.items()},
        "runs": {m: {str(c): rs for c, rs in by_c.items()} for m, by_c in runs.items()},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print_report(summary, over_off, servers, idle_busy)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # cleanup runs on SIGTERM too
    main()
