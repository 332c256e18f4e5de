"""A real Dask cluster for the slow tests, started as a user starts one: a Prefect API every
process reports to (`python -m flows.server`, what `prefect server start` is on a cluster),
`dask scheduler` and `dask worker` processes on 127.0.0.1; and what the tests ask of a run on it
(`aunet run`, the tasks each worker ran, the units each one runs now)."""
from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from procs import BIN, HOST, free_port, start, stop, wait_until

REPO = Path(__file__).resolve().parents[1]
START_S = 180  # the Prefect API's database takes 22-27 s to create on 2 cores
RUN_S = 900
# bit-identity between two runs needs one thread count everywhere (docs/architecture.md)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class Cluster:
    address: str  # the scheduler's
    env: dict  # of the flow and the workers
    logs: Path
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)  # `dask worker` by name


def _http_ok(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


@contextmanager
def dask_cluster(logs: Path, n_workers: int, extra_env: dict | None = None) -> Iterator[Cluster]:
    """A Prefect API, a scheduler and `n_workers` one-thread workers named w0, w1, ...; every
    process in its own process group, stopped after. `extra_env`: more variables for all of
    them (an S3 server's AWS variables)."""
    api_port, sched_port = free_port(), free_port()
    env = {**os.environ, **(extra_env or {}), **ONE_THREAD, "PYTHONPATH": str(REPO),
           "PREFECT_API_URL": f"http://{HOST}:{api_port}/api",
           "DASK_CONFIG": str(REPO / "configs" / "dask")}
    cluster = Cluster(f"tcp://{HOST}:{sched_port}", env, logs)
    servers = []
    try:
        servers.append(start([BIN / "python", "-m", "flows.server", os.getpid(), api_port],
                             logs / "prefect.log", env, REPO))
        servers.append(start([BIN / "dask", "scheduler", "--host", HOST, "--port", sched_port,
                              "--no-dashboard"], logs / "scheduler.log", env))
        for i in range(n_workers):
            start_worker(cluster, f"w{i}")
        wait_until(lambda: _http_ok(f"{env['PREFECT_API_URL']}/health"), servers, START_S,
                   "the Prefect API", logs / "prefect.log")
        wait_for_workers(cluster, n_workers)
        yield cluster
    finally:
        for p in [*cluster.workers.values(), *reversed(servers)]:
            stop(p)


def wait_for_workers(cluster: Cluster, n: int) -> None:
    from distributed import Client

    with Client(cluster.address, timeout=START_S) as client:
        client.wait_for_workers(n, timeout=START_S)


def aunet_run_args(config: Path, *sets: str) -> list[str]:
    return [str(a) for a in [BIN / "aunet", "run", "--config", config]
            + [a for s in sets for a in ("--set", s)]]


def aunet_run(config: Path, env: dict, *sets: str) -> float:
    """`aunet run` to the end (it must succeed); its wall time in seconds."""
    t0 = time.monotonic()
    cp = subprocess.run(aunet_run_args(config, *sets), env=env, cwd=REPO, capture_output=True,
                        text=True, timeout=RUN_S)
    assert cp.returncode == 0, f"aunet run failed ({cp.returncode}):\n{cp.stdout[-3000:]}\n{cp.stderr[-5000:]}"
    took = time.monotonic() - t0
    print(f"aunet run {' '.join(sets)}: {took:.1f} s")
    return took


def tasks_per_worker(address: str) -> dict[str, dict[str, int]]:
    """The keys of the tasks each live worker ran, by prefix (Dask names a task by its
    function: `unit_task-<token>` for a unit)."""
    from distributed import Client

    def executed(dask_worker) -> dict[str, int]:
        keys = {key for key, *_ in dask_worker.state.log
                if isinstance(key, str) and key != "free-keys"}  # (an event, not a task)
        return dict(Counter(key.split("-", 1)[0] for key in keys))

    with Client(address) as client:
        got = client.run(executed)
        names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
    return {names[a]: keys for a, keys in got.items()}


def running_units(client) -> dict[str, list[tuple[str, str, tuple]]]:
    """What each live worker is running now, by name: (stage, unit name, unit) per unit task
    (read from the Dask task's arguments: prefect_dask hands the task's parameters to it)."""

    def running(dask_worker) -> list:
        out = []
        for ts in list(dask_worker.state.executing):
            p = ts.run_spec.kwargs["parameters"]
            out.append((p["stage"], p["unit"].name, p["unit"]))
        return out

    got = client.run(running)
    names = {a: w["name"] for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    return {names[a]: units for a, units in got.items() if a in names}


def start_worker(cluster: Cluster, name: str) -> subprocess.Popen:
    """One more `dask worker` (one thread) named `name`, its log beside the others."""
    proc = start([BIN / "dask", "worker", cluster.address, "--name", name, "--host", HOST,
                  "--nworkers", "1", "--nthreads", "1", "--no-dashboard"],
                 cluster.logs / f"{name}.log", cluster.env)
    cluster.workers[name] = proc
    return proc
