"""A real Dask cluster, started as a user starts one: `dask scheduler` and two `dask worker`
processes on 127.0.0.1, a Prefect API they all report to, then `aunet run` with `dask.address`
set. Both workers must have run units, and every report table must equal a local run's."""
from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.config import load_config
from store import tables
from store.catalog import Catalog

from .conftest import REPO, tiny_config
from procs import BIN, HOST, free_port, start, stop, wait_until

pytestmark = pytest.mark.slow
N_WORKERS = 2
START_S = 180  # the Prefect API's database takes 22-27 s to create on 2 cores
RUN_S = 900
# bit-identity between two runs needs one thread count everywhere (docs/architecture.md)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# what differs between two runs by design: when, how long, and where (the config names the
# store folder and the scheduler address; the key of what was asked for, config_key, is equal)
VOLATILE = {"runs": ["created_utc", "timings_json", "config_json"]}


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(scheduler address, environment of the flow and workers); stopped after the module."""
    logs = tmp_path_factory.mktemp("cluster")
    api_port, sched_port = free_port(), free_port()
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(REPO),
           "PREFECT_API_URL": f"http://{HOST}:{api_port}/api",
           "DASK_CONFIG": str(REPO / "configs" / "dask")}
    procs = []
    try:
        # the Prefect API every process reports to (what `prefect server start` is on a cluster)
        procs.append(start([BIN / "python", "-m", "flows.server", os.getpid(), api_port],
                           logs / "prefect.log", env, REPO))
        address = f"tcp://{HOST}:{sched_port}"
        procs.append(start([BIN / "dask", "scheduler", "--host", HOST, "--port", sched_port,
                            "--no-dashboard"], logs / "scheduler.log", env))
        for i in range(N_WORKERS):
            procs.append(start([BIN / "dask", "worker", address, "--name", f"w{i}", "--host", HOST,
                                "--nworkers", "1", "--nthreads", "1", "--no-dashboard"],
                               logs / f"worker{i}.log", env))
        wait_until(lambda: _http_ok(f"{env['PREFECT_API_URL']}/health"), procs, START_S,
                   "the Prefect API", logs / "prefect.log")
        from distributed import Client

        with Client(address, timeout=START_S) as client:
            client.wait_for_workers(N_WORKERS, timeout=START_S)
        yield address, env
    finally:
        for p in reversed(procs):
            stop(p)


def _aunet_run(config: Path, env: dict, *sets: str) -> None:
    t0 = time.monotonic()
    args = [BIN / "aunet", "run", "--config", config] + [a for s in sets for a in ("--set", s)]
    cp = subprocess.run([str(a) for a in args], env=env, cwd=REPO, capture_output=True, text=True,
                        timeout=RUN_S)
    assert cp.returncode == 0, f"aunet run failed ({cp.returncode}):\n{cp.stdout[-3000:]}\n{cp.stderr[-5000:]}"
    print(f"aunet run {' '.join(sets)}: {time.monotonic() - t0:.1f} s")


def _tasks_per_worker(address: str) -> dict[str, dict[str, int]]:
    """The keys of the tasks each worker ran, by prefix (Dask names a task by its function:
    `unit_task-<token>` for a unit)."""
    from distributed import Client

    def executed(dask_worker) -> dict[str, int]:
        keys = {key for key, *_ in dask_worker.state.log
                if isinstance(key, str) and key != "free-keys"}  # (an event, not a task)
        return dict(Counter(key.split("-", 1)[0] for key in keys))

    with Client(address) as client:
        got = client.run(executed)
        names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
    return {names[a]: keys for a, keys in got.items()}


def _tables(store: Path) -> dict[str, pa.Table]:
    catalog = Catalog(store)
    out = {}
    for name in tables.TABLES:
        t = tables.read(catalog, name).drop_columns(["run", *VOLATILE.get(name, [])])
        out[name] = t.sort_by([(c, "ascending") for c in t.column_names
                               if pa.types.is_string(t.schema.field(c).type)
                               or pa.types.is_integer(t.schema.field(c).type)])
    return out


def test_two_worker_cluster_run_equals_a_local_run(cluster, tmp_path):
    address, env = cluster
    config = tiny_config(tmp_path)
    local, remote = tmp_path / "local", tmp_path / "remote"
    _aunet_run(config, env, f"store={local}")  # a local cluster of the config's two workers
    _aunet_run(config, env, f"store={remote}", f"dask.address={address}")

    ran = _tasks_per_worker(address)
    assert sorted(ran) == [f"w{i}" for i in range(N_WORKERS)], ran
    assert all(keys.get("unit_task") for keys in ran.values()), ran
    print("tasks per worker:", ran)
    cfg = load_config(config)
    assert cfg.dask.address is None  # the local run really was local
    want, got = _tables(local), _tables(remote)
    assert want["metrics"].num_rows and want["predictions"].num_rows
    for name in tables.TABLES:
        assert got[name].equals(want[name]), f"table {name} differs between the local and cluster run"
