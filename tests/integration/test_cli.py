"""The ``infergw`` command, run as a user runs it, with the connection file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from infergw.demo.models import digits_split
from infergw.local.stack import LocalStack


def _infergw(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    connection = Path(stack.config.state_dir) / "local.json"
    return subprocess.run(
        [sys.executable, "-m", "infergw.cli", "--connection", str(connection), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_invoke_with_data_prints_the_prediction(stack: LocalStack) -> None:
    split = digits_split()
    row = split.x_test[0].tolist()
    result = _infergw(stack, "invoke", "digits", "--data", json.dumps({"inputs": [row]}))
    assert result.returncode == 0, result.stderr
    prediction = json.loads(result.stdout)["predictions"][0]
    assert prediction["label"] == int(split.y_test[0])
    assert "route: realtime" in result.stderr


def test_invoke_with_a_csv_file(stack: LocalStack, tmp_path: Path) -> None:
    split = digits_split()
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(",".join(str(v) for v in r) for r in split.x_test[:3].tolist()))
    result = _infergw(stack, "invoke", "digits", "--file", str(path), "--compact")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["predictions"]) == 3


def test_a_problem_is_reported_not_a_traceback(stack: LocalStack) -> None:
    result = _infergw(stack, "invoke", "digits", "--data", '{"inputs": [[1, 2]]}')
    assert result.returncode == 1
    assert "422" in result.stderr and "Traceback" not in result.stderr


def test_jobs_submit_wait_downloads_and_notifications_tail_sees_it(
    stack: LocalStack, tmp_path: Path
) -> None:
    connection = Path(stack.config.state_dir) / "local.json"
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infergw.cli",
            "--connection",
            str(connection),
            "notifications",
            "tail",
            "--tenant",
            "demo",
            "--model",
            "digits",
            "--count",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert tail.stdout is not None
        first = tail.stdout.readline()  # subscribed before anything is submitted
        assert "listening" in first, first
        split = digits_split()
        rows = split.x_test.tolist() * 20  # 9,000 rows
        path = tmp_path / "rows.ndjson"
        path.write_text("\n".join(json.dumps(r) for r in rows))
        out = tmp_path / "predictions.ndjson"
        result = _infergw(
            stack, "jobs", "submit", "digits", "--file", str(path), "--wait", "--out", str(out)
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "completed: 9000 rows" in result.stdout
        labels = [json.loads(line)["label"] for line in out.read_text().splitlines()]
        assert len(labels) == 9000
        accuracy = sum(a == int(b) for a, b in zip(labels[:450], split.y_test, strict=True)) / 450
        assert accuracy >= 0.9
        printed, _ = tail.communicate(timeout=60)
        note = json.loads(printed.strip().splitlines()[-1])
        assert note["attributes"] == {"tenant": "demo", "model": "digits", "status": "COMPLETED"}
        assert note["message"]["invocationStatus"] == "Completed"
    finally:
        if tail.poll() is None:
            tail.kill()


def test_keys_create_list_revoke_with_the_cli(stack: LocalStack) -> None:
    created = _infergw(stack, "keys", "create", "--tenant", "dave", "--scopes", "invoke")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("igw_test_")
    key_id = next(line.split()[-1] for line in created.stdout.splitlines() if "key id" in line)
    listed = _infergw(stack, "keys", "list", "--tenant", "dave", "--json")
    assert [k["key_id"] for k in json.loads(listed.stdout)] == [key_id]
    assert key not in listed.stdout
    revoked = _infergw(stack, "keys", "revoke", key_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout


def test_the_python_client_picks_async_for_a_large_body(stack: LocalStack) -> None:
    from infergw.client import Client

    assert stack.connection is not None
    with Client(stack.connection.gateway_url, stack.connection.api_key) as client:
        small = client.invoke_auto("digits", json.dumps({"inputs": [[0.0] * 64]}).encode())
        assert small.status == 200  # type: ignore[union-attr]
        rows = "\n".join(json.dumps([0.0] * 64) for _ in range(24_000)).encode()  # > 6 MB
        assert len(rows) > 6 * 1024 * 1024
        job = client.invoke_auto("digits", rows, content_type="application/x-ndjson")
        assert isinstance(job, dict) and job["status"] == "COMPLETED"
        assert job["progress"]["records_done"] == 24_000
