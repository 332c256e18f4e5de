"""Units on a Dask cluster that loses workers (docs/orchestration.md, "A worker killed").

A worker that dies (kill -9, the OOM killer, a lost machine) takes the unit it was running
with it; Dask's scheduler runs that unit again on another worker (up to
`distributed.scheduler.allowed-failures` deaths per unit, then the unit fails with
KilledWorker: flows.tasks.unit_result reports it by name and the others go on). What Dask does
not do is give up when no worker is left: its tasks wait for one forever. `collect` waits for a
stage's units while watching the cluster, and when no worker has been connected for
`dask.no_workers_timeout_s` while units remain it cancels them and ends the stage with one
line saying what to do; a rerun then resumes (finished units are kept by the stages).
"""
from __future__ import annotations

import time
from typing import Any

from flows.tasks import unit_result
from stages.contract import UnitResult

POLL_S = 1.0
NAMED = 3  # unfinished units named in the message


def _workers(client) -> int:
    try:
        return len(client.nthreads())
    except OSError:  # the scheduler itself is unreachable: no worker reachable either
        return 0


def _wait(futures: list, timeout_s: float | None) -> float | None:
    """Wait until every Dask future is done; the seconds the cluster had no worker when it gave
    up (the unfinished futures cancelled), or None when every unit finished."""
    if timeout_s is None or not futures:
        return None
    client, alone_since = futures[0].client, None
    while not all(f.done() for f in futures):
        now = time.monotonic()
        if _workers(client):
            alone_since = None
        elif alone_since is None:
            alone_since = now
        elif now - alone_since >= timeout_s:
            client.cancel([f for f in futures if not f.done()])
            return now - alone_since
        time.sleep(POLL_S)
    return None


def collect(stage: str, futures: list, units: list[Any],
            timeout_s: float | None) -> tuple[list[UnitResult], str | None]:
    """Each unit's result, and the stage's one-line message when the cluster ran out of workers
    (its unfinished units come back failed, "not run"). `futures`: the unit tasks' Prefect
    futures; those of a Dask task runner are watched, any other kind only waited for."""
    from distributed import Future

    wrapped = [w if isinstance(w := getattr(f, "wrapped_future", None), Future) else None
               for f in futures]
    dask_futures = [w for w in wrapped if w is not None]
    alone = _wait(dask_futures, timeout_s)
    if alone is None:
        return [unit_result(f, u) for f, u in zip(futures, units)], None
    cancelled = [w is not None and w.cancelled() for w in wrapped]
    lost = [u for u, c in zip(units, cancelled) if c]
    address = dask_futures[0].client.scheduler.address
    results = [UnitResult(u.name, False, 0.0, error=f"{u.name}: not run: no Dask worker left")
               if c else unit_result(f, u) for f, u, c in zip(futures, units, cancelled)]
    names = ", ".join(u.name for u in lost[:NAMED]) + (", ..." if len(lost) > NAMED else "")
    message = (f"{stage}: no Dask worker connected to {address} for {alone:.0f} s, "
               f"{len(lost)} unit(s) not run ({names}): start workers (`dask worker {address}`) "
               f"and run the same command again; finished units are kept")
    return results, message
