"""The temporary Prefect server of `aunet run` does not outlive its parent: a kill -9 of the main
process (as the OOM killer sends; atexit never runs) still ends it (flows/server.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

SCRIPT = """
import time
from flows.server import temporary_server
with temporary_server() as url:
    print(url, flush=True)
    time.sleep(600)
"""
STOP_WITHIN_S = 30


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_kill_9_of_the_parent_ends_its_temporary_server():
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and _answers(url)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + STOP_WITHIN_S
        while _answers(url) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _answers(url), f"the server at {url} outlived its killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
