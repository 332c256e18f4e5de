"""Servers the slow tests start as a user would (a Dask scheduler and workers, a Prefect API,
an S3 server): on 127.0.0.1, free ports, each in its own process group, stopped after."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
POLL_S = 0.2
STOP_GRACE_S = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start(args: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """A server process with its output in `log` (read it when a test fails)."""
    out = open(log, "w")
    try:
        return subprocess.Popen([str(a) for a in args], env=env, cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()  # the child holds its own copy


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after a grace period."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_until(ready: Callable[[], bool], procs: list[subprocess.Popen], timeout: float,
               what: str, log: Path) -> None:
    """Poll `ready` until it holds; fail with the log's tail when a process exits or time is up."""
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [p for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log.exists() else ""
            why = f"exited with code {dead[0].returncode}" if dead else f"not ready in {timeout:.0f} s"
            raise AssertionError(f"{what} {why}:\n{tail}")
        time.sleep(POLL_S)
