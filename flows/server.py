"""The temporary Prefect server of a command-line flow run, tied to the process that started it.

Without PREFECT_API_URL, Prefect starts a temporary server (uvicorn, in a subprocess) and stops
it at exit (atexit): a kill -9 of the main process, as the OOM killer sends, skips atexit and
the server lives on, holding its port and database. `temporary_server()` starts the same app
(`prefect.server.api.server.create_app`, ephemeral, no UI) itself, in a child that dies with
its parent: on Linux the kernel sends it SIGTERM when the parent dies (prctl
PR_SET_PDEATHSIG); everywhere, as a backstop, a watchdog thread in the child polls its parent
and stops the server when the parent is gone. The run then talks to it through PREFECT_API_URL
(set for this process and the Dask workers it starts), so Prefect starts no server of its own.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

HOST = "127.0.0.1"
WATCH_S = 1.0  # how often the watchdog looks at its parent
GRACE_S = 10.0  # after SIGTERM, how long the server may take before it is ended hard
HEALTH_POLL_S = 0.2
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the temporary Prefect server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(HEALTH_POLL_S)
    raise RuntimeError(f"the temporary Prefect server did not answer within {timeout:.0f} s "
                       "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def temporary_server() -> Iterator[str | None]:
    """A Prefect API for this run: None (nothing started) when PREFECT_API_URL is set, else the
    URL of a temporary server that stops when the block ends or this process dies. Call from the
    main thread (the parent-death signal follows the thread that started the child)."""
    from prefect.settings import (PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
                                  get_current_settings, temporary_settings)

    if PREFECT_API_URL.value():
        yield None
        return
    port = _free_port()
    url = f"http://{HOST}:{port}/api"
    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "flows.server", str(os.getpid()), str(port)],
                            env=env)
    before = os.environ.get("PREFECT_API_URL")
    try:
        _wait_healthy(proc, url, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        os.environ["PREFECT_API_URL"] = url  # the Dask workers this run starts inherit it
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        _send_pending_logs()
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
        _stop(proc)


def _send_pending_logs() -> None:
    """Send the run's queued log records while the server is up: Prefect's log worker otherwise
    sends them at exit, to a stopped server, and prints "Error logging to API" after the
    run's own last lines."""
    from prefect.logging.handlers import APILogHandler

    try:
        APILogHandler().flush()
    except Exception:  # noqa: BLE001 - logs are best effort; the run's result stands
        pass


def die_with_parent(parent: int) -> None:
    """In the server process: end when `parent` ends (parent-death signal, and a watchdog)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_S)
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown
        time.sleep(GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def main(argv: list[str]) -> None:
    """`python -m flows.server PARENT_PID PORT`: the server, until its parent ends."""
    from functools import partial

    import uvicorn
    from prefect.server.api.server import create_app

    die_with_parent(int(argv[0]))
    uvicorn.run(partial(create_app, ephemeral=True, final=True), factory=True, host=HOST,
                port=int(argv[1]), log_level="error", lifespan="on")


if __name__ == "__main__":
    main(sys.argv[1:])
