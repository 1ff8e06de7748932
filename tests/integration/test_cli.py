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
