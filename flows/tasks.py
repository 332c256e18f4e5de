"""Prefect tasks: thin wrappers over the one stage runner (`stages.runner`).

Caching is the stages' own: `plan` leaves out every unit whose outputs carry the key their
inputs, parameters and code give, so Prefect's result cache is off (a cached Prefect result
could outlive a deleted artifact). Retries apply only to transient I/O errors (a unit's
result marked `transient` is raised as TransientUnitError, which the retry condition accepts). A user error in
plan or finish comes back as a message (the flow ends Failed with it, without a traceback); a
unit's failure comes back as a failed UnitResult and the other units go on.
"""
from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline.config import RunConfig
from pipeline.errors import UserError
from stages import runner
from stages.contract import Plan, UnitResult
from store.catalog import Catalog

IO_RETRIES = 2
IO_RETRY_DELAY_S = 5


class TransientUnitError(RuntimeError):
    """A unit failed on an I/O error a retry may get past (pipeline.errors.is_transient)."""

    def __init__(self, result: UnitResult):
        super().__init__(result.error)
        self.result = result


def _retry_on_io(task, task_run, state) -> bool:
    """Retry a unit only when it failed on a transient I/O error (never on a bug or user error)."""
    try:
        state.result()
    except TransientUnitError:
        return True
    except Exception:  # noqa: BLE001 - anything else is final
        return False
    return False


@task(name="plan", cache_policy=NO_CACHE, task_run_name="plan-{stage}")
def plan_task(stage: str, cfg: RunConfig, force: bool, select: dict | None) -> Plan | str:
    try:
        p = runner.plan(stage, cfg, Catalog(cfg.store), force, select)
        runner.prepare(stage, cfg, Catalog(cfg.store), p)
        return p
    except UserError as e:
        return f"{stage}: {e}"


@task(name="unit", cache_policy=NO_CACHE, retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAY_S,
      retry_condition_fn=_retry_on_io, task_run_name="{stage}-{unit}")
def unit_task(stage: str, cfg: RunConfig, unit: Any) -> UnitResult:
    """One unit; raises TransientUnitError (so Prefect retries it) on a transient I/O error."""
    result = runner.run_unit(stage, cfg, Catalog(cfg.store), unit, threads=runner.task_threads(cfg))
    if result.transient:
        raise TransientUnitError(result)
    return result


def unit_result(future, unit: Any) -> UnitResult:
    """A unit task's result; its last transient failure (after the retries) as a failed result,
    and so a unit whose every worker died running it (Dask's KilledWorker, raised by the future
    itself after `distributed.scheduler.allowed-failures` deaths) or that was cancelled."""
    try:
        got = future.result(raise_on_failure=False)
    except Exception as e:  # noqa: BLE001 - the unit is reported by name, the others go on
        return UnitResult(unit.name, False, 0.0, error=f"{unit.name}: worker failed: "
                                                        f"{type(e).__name__}: {e}")
    if isinstance(got, TransientUnitError):
        return got.result
    if isinstance(got, BaseException):  # the task itself broke (a worker died, a crash)
        return UnitResult(unit.name, False, 0.0, error=f"{unit.name}: {type(got).__name__}: {got}")
    return got


@task(name="finish", cache_policy=NO_CACHE, task_run_name="finish-{stage}")
def finish_task(stage: str, cfg: RunConfig, plan: Plan, results: list[UnitResult]) -> dict:
    try:
        return runner.finish(stage, cfg, Catalog(cfg.store), plan, results)
    except UserError as e:
        return {"error": f"{stage}: {e}", "failed": [r.error for r in results if not r.ok]}
