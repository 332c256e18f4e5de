"""Prefect tasks: thin wrappers over a stage's plan / run_unit / finish.

Caching is the stages' own: `plan` leaves out every unit whose outputs carry the same
fingerprint (inputs, parameters, code version), so Prefect's result cache is off (a cached
Prefect result could outlive a deleted artifact). Retries apply only to I/O errors.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline.config import RunConfig
from store.catalog import Catalog

IO_RETRIES = 2
IO_RETRY_DELAY_S = 5
# Not transient: retrying a missing file or a permission problem cannot help.
_PERMANENT_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def _retry_on_io(task, task_run, state) -> bool:
    try:
        state.result()
    except _PERMANENT_OS_ERRORS:
        return False
    except OSError:
        return True
    except Exception:
        return False
    return False


def _stage(name: str):
    return importlib.import_module(f"stages.{name}")


@task(name="plan", cache_policy=NO_CACHE, task_run_name="plan-{stage}")
def plan_task(stage: str, cfg: RunConfig, force: bool) -> list[Any]:
    return _stage(stage).plan(cfg, Catalog(cfg.store), force=force)


def _set_intra_op_threads(cfg: RunConfig) -> None:
    """Dask's nanny pins worker processes to one BLAS/OpenMP thread (OMP_NUM_THREADS=1), which
    halves torch's speed on two cores. Give each task its share of the machine's cores: on a
    local cluster the cores over all task slots, on a remote one the cores over this worker's."""
    import torch

    slots = cfg.dask.threads_per_worker * (1 if cfg.dask.address else cfg.dask.n_workers)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, slots)))


@task(name="unit", cache_policy=NO_CACHE, retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAY_S,
      retry_condition_fn=_retry_on_io, task_run_name="{stage}-{unit}")
def unit_task(stage: str, cfg: RunConfig, unit: Any) -> dict:
    _set_intra_op_threads(cfg)
    return _stage(stage).run_unit(cfg, Catalog(cfg.store), unit)


@task(name="finish", cache_policy=NO_CACHE, task_run_name="finish-{stage}")
def finish_task(stage: str, cfg: RunConfig, results: list[dict]) -> dict:
    return _stage(stage).finish(cfg, Catalog(cfg.store), results)
