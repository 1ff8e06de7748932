"""`make up` as a user runs it: it prints a key and a curl, serves predictions, and Ctrl-C
leaves no process behind."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from infergw.demo.models import digits_split
from infergw.local import processes

ROOT = Path(__file__).resolve().parents[2]


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_make_up_serves_predictions_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    ports = {
        "INFERGW_GATEWAY_PORT": processes.free_port(),
        "INFERGW_AWS_PORT": processes.free_port(),
        "INFERGW_ENDPOINT_PORT": processes.free_port(),
    }
    env = {
        **os.environ,
        **{k: str(v) for k, v in ports.items()},
        "INFERGW_STATE_DIR": str(tmp_path / "state"),
    }
    proc = subprocess.Popen(
        ["make", "up"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True
    ).start()
    try:
        curl = None
        deadline = time.monotonic() + 240
        output = []
        while curl is None:
            line = lines.get(timeout=max(1.0, deadline - time.monotonic()))
            output.append(line)
            if line.startswith("curl "):
                curl = line
        key = re.search(r"Bearer (igw_test_[A-Za-z0-9_-]+)", curl)
        url = re.search(r"curl -s (\S+)", curl)
        body = re.search(r"-d '(.+)'", curl)
        assert key and url and body, curl

        # The printed command works as printed...
        response = httpx.post(
            url.group(1),
            content=body.group(1).encode(),
            headers={"Authorization": f"Bearer {key.group(1)}", "Content-Type": "application/json"},
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-inference-route"].startswith("realtime")
        assert response.json()["predictions"][0]["label"] == 0  # the sample is a zero
        # ...and so does any held-out digit.
        split = digits_split()
        response = httpx.post(
            url.group(1),
            json={"inputs": [split.x_test[1].tolist()]},
            headers={"Authorization": f"Bearer {key.group(1)}"},
        )
        assert response.json()["predictions"][0]["label"] == int(split.y_test[1])
        connection = json.loads((tmp_path / "state" / "local.json").read_text())
        assert connection["api_key"] == key.group(1)
        assert connection["gateway_url"] == f"http://127.0.0.1:{ports['INFERGW_GATEWAY_PORT']}"
        assert connection["aws_endpoint_url"].endswith(str(ports["INFERGW_AWS_PORT"]))

        spawned = _descendants(proc.pid)
        assert len(spawned) >= 5  # infergw, emulator, endpoint host, 2 model servers, gateway
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        proc.wait(timeout=60)
    survivors = [pid for pid in spawned if _alive(pid)]
    assert survivors == [], survivors
