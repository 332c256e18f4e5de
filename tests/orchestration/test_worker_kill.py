"""kill -9 of `dask worker` processes in the middle of the features stage of `aunet run` on a
cluster started as a user starts one (tests/dask_cluster.py; docs/orchestration.md, "A worker
killed").

- One worker lost, one left: the run finishes (exit 0), the lost worker's unit is rerun by the
  other, the shards it had finished are kept (not recomputed), every report table equals a
  local run's.
- Every worker lost: `aunet run` stops within `dask.no_workers_timeout_s` with one line saying
  what to do (exit 1) instead of waiting forever; the store stays consistent (every shard marked
  done holds its data); with a new worker, the rerun keeps the finished shards and ends with the
  tables of a local run.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import zarr
from distributed import Client

from dask_cluster import (REPO, RUN_S, aunet_run, aunet_run_args, dask_cluster, running_units,
                          start_worker, wait_for_workers)
from run_tables import assert_same_tables, report_tables
from store.features.layout import damaged_shards, done_shards, root_of, shard_file

from .conftest import tiny_config

pytestmark = pytest.mark.slow
N_WORKERS = 2
NO_WORKERS_S = 5
WAIT_S = 300
POLL_S = 0.1


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with dask_cluster(tmp_path_factory.mktemp("cluster"), N_WORKERS) as c:
        yield c


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    return tiny_config(tmp_path_factory.mktemp("kill"), dask={"no_workers_timeout_s": NO_WORKERS_S})


@pytest.fixture(scope="module")
def local(cluster, config, tmp_path_factory):
    """The report tables of an uninterrupted run on a local cluster."""
    store = tmp_path_factory.mktemp("local") / "store"
    aunet_run(config, cluster.env, f"store={store}")
    return report_tables(store)


def _features(store: Path) -> zarr.Group | None:
    found = list(store.glob("*/features/*/features.zarr/zarr.json"))
    return zarr.open_group(str(found[0].parent), mode="r") if found else None


def _mtimes(group: zarr.Group, shards) -> dict[int, int]:
    return {s: shard_file(root_of(group), s).stat().st_mtime_ns for s in shards}


def _kill_mid_features(cluster, proc, store: Path, everyone: bool):
    """Wait until a worker is in the middle of a features unit (one of its shards done, one
    not), then SIGKILL that worker's `dask worker` process group (nanny and worker: the machine
    is gone), or every live worker's. (victim, unit name, {done shard: its file's mtime})."""
    deadline = time.monotonic() + WAIT_S
    with Client(cluster.address) as client:
        while time.monotonic() < deadline and proc.poll() is None:
            g = _features(store)
            done = done_shards(g) if g is not None else {}
            for name, units in running_units(client).items():
                for stage, unit, u in units:
                    if stage == "features" and 0 < sum(s in done for s in u.shards) < len(u.shards):
                        victims = [n for n, p in cluster.workers.items()
                                   if p.poll() is None and (everyone or n == name)]
                        for n in victims:
                            os.killpg(cluster.workers[n].pid, signal.SIGKILL)
                            cluster.workers[n].wait()
                        print(f"killed {victims} while {name} ran features-{unit} "
                              f"(shards done: {sorted(done)})")
                        return name, unit, _mtimes(g, done)
            time.sleep(POLL_S)
    pytest.fail(f"no worker was seen in the middle of a features unit (aunet run: {proc.poll()})")


@contextmanager
def _run(config: Path, cluster, store: Path) -> Iterator[subprocess.Popen]:
    """`aunet run` on the cluster, started; killed if the test leaves it running."""
    proc = subprocess.Popen(aunet_run_args(config, f"store={store}", f"dask.address={cluster.address}"),
                            env=cluster.env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ended(proc: subprocess.Popen, timeout: float, what: str) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"aunet run still running {timeout:.0f} s after {what}")


def _consistent(store: Path, kept: dict[int, int]) -> zarr.Group:
    """Every shard marked done holds its data (checksums and finiteness of every chunk), and the
    shards done at the kill were never rewritten."""
    g = _features(store)
    assert not damaged_shards(g, deep=True)
    assert set(kept) <= set(done_shards(g))
    assert _mtimes(g, kept) == kept, "a shard finished before the kill was computed again"
    return g


def test_a_worker_killed_mid_features_its_unit_reruns_on_the_other(cluster, config, local, tmp_path):
    store = tmp_path / "store"
    t0 = time.monotonic()
    with _run(config, cluster, store) as proc:
        victim, unit, kept = _kill_mid_features(cluster, proc, store, everyone=False)
        t_kill = time.monotonic()
        out, err = _ended(proc, RUN_S, "one of two workers died")
    print(f"killed at {t_kill - t0:.1f} s; run ended {time.monotonic() - t_kill:.1f} s later")
    assert proc.returncode == 0, f"aunet run failed ({proc.returncode}):\n{out[-3000:]}\n{err[-5000:]}"

    finished = f"Task run 'features-{unit}' - Finished in state Completed()"
    survivors = [n for n, p in cluster.workers.items() if p.poll() is None]
    assert survivors and victim not in survivors
    assert any(finished in (cluster.logs / f"{n}.log").read_text() for n in survivors), \
        f"no surviving worker finished features-{unit}"
    assert finished not in (cluster.logs / f"{victim}.log").read_text()
    g = _consistent(store, kept)
    assert len(done_shards(g)) == g["shard_done"].shape[0]
    assert_same_tables(local, report_tables(store), "killed-worker")


def test_every_worker_killed_the_run_stops_in_one_line_and_the_rerun_resumes(cluster, config, local,
                                                                             tmp_path):
    store = tmp_path / "store"
    if not any(p.poll() is None for p in cluster.workers.values()):
        start_worker(cluster, "w-first")
        wait_for_workers(cluster, 1)
    with _run(config, cluster, store) as proc:
        _, unit, kept = _kill_mid_features(cluster, proc, store, everyone=True)
        t_kill = time.monotonic()
        out, err = _ended(proc, NO_WORKERS_S + 60, "the last worker died")  # (Dask waits forever)
    stopped = time.monotonic() - t_kill
    print(f"aunet run stopped {stopped:.1f} s after the last worker died")
    assert proc.returncode == 1, f"({proc.returncode}):\n{out[-3000:]}\n{err[-5000:]}"
    last = err.strip().splitlines()[-1]
    print(last)
    said = re.fullmatch(r"aunet run: FAILED: stage features failed: features: no Dask worker "
                        rf"connected to {cluster.address} for (\d+) s, \d+ unit\(s\) not run "
                        r"\((.*)\): start workers \(`dask worker (\S+)`\) and run the same "
                        r"command again; finished units are kept", last)
    assert said, last
    assert int(said[1]) >= NO_WORKERS_S and unit in said[2].split(", ") and said[3] == cluster.address
    assert not _consistent(store, kept).attrs["provenance"].get("key")  # the stage is not done

    start_worker(cluster, "w-new")
    wait_for_workers(cluster, 1)
    aunet_run(config, cluster.env, f"store={store}", f"dask.address={cluster.address}")
    _consistent(store, kept)
    assert_same_tables(local, report_tables(store), "resumed")
