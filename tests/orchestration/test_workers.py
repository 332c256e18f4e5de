"""A stage's units on a Dask cluster that loses its workers (flows.workers, flows.tasks): a unit
whose every worker died is one failed unit, not a crashed flow; a cluster with no worker left
ends the stage with one line instead of waiting forever. In-process clusters, no Prefect server
(test_worker_kill.py kills real `dask worker` processes under `aunet run`)."""
from __future__ import annotations

import os
import time
import uuid
from types import SimpleNamespace

import dask
from distributed import Client, LocalCluster
from prefect_dask.task_runners import PrefectDaskFuture

from flows.tasks import unit_result
from flows.workers import collect


def _die() -> None:
    os._exit(1)  # what a kill -9 leaves: the worker process gone mid-task


def _prefect(future) -> PrefectDaskFuture:
    return PrefectDaskFuture(wrapped_future=future, task_run_id=uuid.uuid4())


def _unit(name: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, size=1)


def test_a_unit_that_kills_every_worker_it_runs_on_is_one_failed_unit():
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                         dashboard_address=":0") as lc, Client(lc) as client:
        future = client.submit(_die, pure=False)
        results, message = collect("features", [_prefect(future)], [_unit("shards0-3")], 60)
    assert message is None  # workers remained (the nanny restarted it)
    [r] = results
    assert not r.ok and r.error.startswith("shards0-3: worker failed: KilledWorker: ")


def test_no_worker_left_ends_the_stage_in_one_line_naming_what_to_do():
    with LocalCluster(n_workers=0, processes=True, dashboard_address=":0") as lc, \
            Client(lc) as client:
        futures = [client.submit(time.sleep, 0, pure=False) for _ in range(4)]
        t0 = time.monotonic()
        results, message = collect("features", [_prefect(f) for f in futures],
                                   [_unit(f"shards{i}") for i in range(4)], 2)
        took = time.monotonic() - t0
        assert all(f.cancelled() for f in futures)
    assert 2 <= took < 10, took
    assert [r.error for r in results] == [f"shards{i}: not run: no Dask worker left" for i in range(4)]
    assert "\n" not in message
    assert message.startswith(f"features: no Dask worker connected to {lc.scheduler_address} for 2 s, "
                              "4 unit(s) not run (shards0, shards1, shards2, ...): start workers")
    assert message.endswith("run the same command again; finished units are kept")


def test_units_on_a_cluster_with_workers_are_waited_for():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as lc, Client(lc) as client:
        future = client.submit(time.sleep, 3, pure=False)  # longer than the timeout: not alone
        results, message = collect("prior", [_prefect(future)], [_unit("fold1")], 1)
        assert message is None and future.status == "finished"
    [r] = results
    assert r is None  # (time.sleep's own result: the unit's result as the future gave it)


def test_a_cancelled_unit_is_reported_not_raised():
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as lc, \
            Client(lc) as client:
        future = client.submit(time.sleep, 0, pure=False)
        client.cancel([future])
        r = unit_result(_prefect(future), _unit("fold2"))
    assert not r.ok and r.error.startswith("fold2: worker failed: ")
