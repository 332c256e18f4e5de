"""End to end through a real Prefect server: work pool, `prefect deploy --all` from prefect.yaml,
a process worker, `prefect deployment run` of the full pipeline on a tiny dataset, then a rerun of
one stage's deployment that must change that stage's outputs and nothing else."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.config import load_config
from store.catalog import Catalog

from .conftest import REPO, snapshot, tiny_config

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
SERVER_START_S = 180
RUN_TIMEOUT_S = 1200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prefect(env, *args, timeout=300, check=True):
    cp = subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)
    if check and cp.returncode != 0:
        raise AssertionError(f"prefect {' '.join(args)} failed ({cp.returncode}):\n{cp.stdout}\n{cp.stderr}")
    return cp


def _stop(proc: subprocess.Popen, sig=signal.SIGINT, times=2) -> None:
    # A Prefect worker stops only on a second SIGINT; the server on the first.
    for _ in range(times):
        if proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        time.sleep(2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_UI_ENABLED": "false"}
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + SERVER_START_S
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                _stop(proc, signal.SIGTERM, 1)
                pytest.fail(f"Prefect server did not start: {(home / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
    try:
        yield env
    finally:
        _stop(proc, signal.SIGTERM, 1)
        log.close()


@pytest.fixture(scope="module")
def worker(server, tmp_path_factory):
    _prefect(server, "work-pool", "create", "aunet-process", "--type", "process")
    _prefect(server, "--no-prompt", "deploy", "--all")
    log = open(tmp_path_factory.mktemp("worker") / "worker.log", "w")
    proc = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "aunet-process"],
                            cwd=REPO, env=server, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield server
    finally:
        _stop(proc)
        log.close()


def _run(env, deployment: str, params: dict) -> None:
    cp = _prefect(env, "deployment", "run", deployment, "--param", f"params={json.dumps(params)}",
                  "--watch", "--watch-timeout", str(RUN_TIMEOUT_S), timeout=RUN_TIMEOUT_S + 60,
                  check=False)
    assert cp.returncode == 0 and "Completed" in cp.stdout, f"{deployment}:\n{cp.stdout}\n{cp.stderr}"


def test_deployments_full_run_then_one_stage(worker, tmp_path):
    config = tiny_config(tmp_path)
    _run(worker, "aunet-full/full", {"config": str(config)})
    cfg = load_config(config)
    catalog = Catalog(cfg.store)
    for table in ("runs", "predictions", "metrics", "significance", "complexity"):
        assert list(catalog.table_dir(table).rglob("*.parquet")), f"no {table} table written"
    assert list(catalog.rendered("demo").glob("*.png"))

    before = snapshot(catalog.root)
    _run(worker, "aunet-train/train", {"config": str(config), "variants": ["au_fan"], "folds": [1],
                                       "force": True})
    after = snapshot(catalog.root)
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed and all(k.startswith("demo/models/au_fan/fold1/") for k in changed), sorted(changed)
