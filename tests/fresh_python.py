"""Running a snippet in a fresh interpreter: what a cold start imports can only be seen in a
process that has imported nothing yet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_fresh(script: str, env: dict[str, str]) -> Any:
    """Run ``script`` in a new Python process at the project's root, with no AWS_ or
    INFERGW_ variable but those in ``env``; it prints one JSON line last, returned parsed."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "INFERGW_"))}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])
