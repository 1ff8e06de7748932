"""Child processes that die with their parent and are stopped in order."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import httpx

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux: the kernel sends SIGTERM to the child when its parent dies, even by SIGKILL,
    # so no process of the stack outlives the one that started it.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setpgrp()  # Ctrl-C reaches the launcher only; it stops children in order


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    log: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``python -m``-style children with the current interpreter."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        [sys.executable, *args],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )


def wait_until_ready(
    url: str,
    process: subprocess.Popen[bytes] | None = None,
    timeout_s: float = 60.0,
    ok: Callable[[httpx.Response], bool] = lambda r: r.status_code < 500,
) -> None:
    """Poll ``url`` until it answers; fail at once if the process dies first."""
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    with httpx.Client(timeout=2.0) as client:
        while True:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{url}: process exited with {process.returncode}")
            try:
                if ok(client.get(url)):
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s")
            time.sleep(delay)  # polling a real condition, with a deadline
            delay = min(delay * 1.5, 0.25)


def stop(processes: Sequence[subprocess.Popen[bytes]], timeout_s: float = 10.0) -> None:
    """SIGTERM all, wait, then SIGKILL what is left."""
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in processes:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
