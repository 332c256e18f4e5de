"""One runner for every stage, used by the command line and by the Prefect flows alike.

Every stage module has the same shape (docs/architecture.md, "The stage contract"):

    STAGE                                   its name
    reads(cfg) -> [(dataset, stage)]        what it reads (shared locks are taken on these)
    plan(cfg, catalog, force, select) -> Plan      read-only: what to do, what is up to date
    prepare(cfg, catalog, plan)             create what must exist before units run (stores)
    run_unit(cfg, catalog, unit, progress) -> dict  one unit of work, in-process or on Dask
    finish(cfg, catalog, plan, results) -> dict     record completion, summarise
    format_summary(summary) -> str

Units carry store paths and index ranges, never arrays, and have a `name` and a `size` (frames,
for progress). Failure policy: a unit that fails is reported by name and the others go on; the
summary lists the failures and the command exits non-zero. A `UserError` is reported by its
message; anything else (a bug) also keeps its traceback in the result.
"""
from __future__ import annotations

import importlib
import os
import time
import traceback
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

from pipeline.config import RunConfig
from pipeline.errors import UserError, is_transient, storage_message
from stages.contract import Plan, UnitResult  # noqa: F401  (re-exported)
from store.stage import Stage

if TYPE_CHECKING:  # the catalog imports torch (identities hash weights): not at start-up
    from store.catalog import Catalog

# a failed unit's data flag: it failed on the user's input or the machine's state (a UserError,
# a full disk), not on a bug; the command line exits 2 when every failed unit is one of these
USER_FAILURE = "user_failure"
STAGES = tuple(s.value for s in Stage)  # in pipeline order (store.stage.Stage)
# Unit-based commands outside the dataset pipeline (same failure policy): they hand their own
# `run_unit` function to run_unit / run_units (`fn`), so the command line and their Prefect flow
# call one function (stages.predict.run).
TOOLS = ("predict",)
UnitFn = Callable[..., dict]


def module(stage: str):
    if stage not in STAGES + TOOLS:
        raise UserError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    return importlib.import_module(f"stages.{stage}")


def set_threads(threads: int | None) -> None:
    """Give torch `threads` intra-op threads (each unit sets its own: the process may be a Dask
    worker whose defaults were chosen for something else)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def run_unit(stage: str, cfg: RunConfig, catalog: Catalog, unit: Any,
             progress: Callable[[int], None] | None = None, threads: int | None = None,
             fn: UnitFn | None = None) -> UnitResult:
    """One unit under the failure policy: never raises for the unit's own failure. `fn`: the
    unit function (default: the stage module's `run_unit`)."""
    set_threads(threads)
    t0 = time.perf_counter()
    try:
        data = (fn or module(stage).run_unit)(cfg, catalog, unit, progress)
        return UnitResult(unit.name, True, time.perf_counter() - t0, data or {})
    except UserError as e:
        return UnitResult(unit.name, False, time.perf_counter() - t0, {USER_FAILURE: True},
                          error=f"{unit.name}: {e}")
    except Exception as e:  # noqa: BLE001 - a bug: reported with its traceback, others go on
        if is_transient(e):  # the flows retry these (flows.tasks); the CLI reports them
            return UnitResult(unit.name, False, time.perf_counter() - t0,
                              error=f"{unit.name}: {type(e).__name__}: {e}", transient=True)
        message = storage_message(e)
        if message is not None:  # a full disk or permissions: the machine's state, not a bug
            return UnitResult(unit.name, False, time.perf_counter() - t0, {USER_FAILURE: True},
                              error=f"{unit.name}: {message}")
        return UnitResult(unit.name, False, time.perf_counter() - t0,
                          error=f"{unit.name}: {type(e).__name__}: {e}",
                          trace=traceback.format_exc())


def task_threads(cfg: RunConfig) -> int:
    """Cores per task slot: all cores (OMP_NUM_THREADS where the user set it) over the local
    cluster's slots, or this worker's. Float sums depend on the thread count, so a run that must
    match another bit for bit pins it with OMP_NUM_THREADS (docs/architecture.md)."""
    slots = cfg.dask.threads_per_worker * (1 if cfg.dask.address else cfg.dask.n_workers)
    return max(1, _cores() // max(1, slots))


def _cores() -> int:
    try:
        return int(os.environ["OMP_NUM_THREADS"])
    except (KeyError, ValueError):
        return os.cpu_count() or 1


def run_units(stage: str, cfg: RunConfig, catalog: Catalog, units: list, *,
              progress: bool = True, client=None, fn: UnitFn | None = None) -> list[UnitResult]:
    """Every unit, in-process in order or over a dask.distributed client; never raises for a
    unit's failure (each comes back as a failed UnitResult)."""
    if not units:
        return []
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(u.size for u in units), desc=stage, unit="frame", disable=not progress)
    results: list[UnitResult] = []
    try:
        if client is None:
            for u in units:
                before = bar.n
                res = run_unit(stage, cfg, catalog, u, bar.update if progress else None, fn=fn)
                bar.update(max(u.size - (bar.n - before), 0))  # units that report no progress
                results.append(res)
        else:
            from distributed import as_completed

            futures = {client.submit(run_unit, stage, cfg, catalog, u, None, task_threads(cfg), fn,
                                     pure=False, key=f"{stage}-{u.name}-{time.time_ns()}"): u
                       for u in units}
            for fut in as_completed(futures):
                u = futures[fut]
                try:
                    res = fut.result()
                except Exception as e:  # noqa: BLE001 - the worker itself died
                    res = UnitResult(u.name, False, 0.0, error=f"{u.name}: worker failed: {e}")
                results.append(res)
                bar.update(u.size)
    finally:
        bar.close()
    return results


@contextmanager
def session(stage: str, cfg: RunConfig, catalog: Catalog) -> Iterator[list[str]]:
    """Hold the stage's locks (exclusive on its artifacts, shared on what it reads) and remove
    the debris a killed run of it left; yields the store-relative names removed."""
    mod = module(stage)
    with catalog.lock(cfg.dataset.name, stage, reads=mod.reads(cfg)):
        yield clean(stage, cfg, catalog)


def plan(stage: str, cfg: RunConfig, catalog: Catalog, force: bool = False,
         select: dict | None = None) -> Plan:
    return module(stage).plan(cfg, catalog, force=force, select=select)


def prepare(stage: str, cfg: RunConfig, catalog: Catalog, p: Plan) -> None:
    if p.units:
        module(stage).prepare(cfg, catalog, p)


def finish(stage: str, cfg: RunConfig, catalog: Catalog, p: Plan,
           results: list[UnitResult]) -> dict:
    return module(stage).finish(cfg, catalog, p, results) | failures(results)


def failures(results: list[UnitResult]) -> dict:
    """A summary's failure lists: `failed` (one line per failed unit), `user_failed` (those that
    failed on the user's input or the machine's state) and `traces` (of bugs)."""
    return {"failed": [r.error for r in results if not r.ok],
            "user_failed": [r.error for r in results if not r.ok and r.data.get(USER_FAILURE)],
            "traces": [r.trace for r in results if r.trace]}


def execute(stage: str, cfg: RunConfig, catalog: Catalog, *, force: bool = False,
            progress: bool = True, client=None, select: dict | None = None) -> dict:
    """The whole stage under its locks: clean a killed run's debris, plan, prepare, run the
    units, finish. Returns the summary, with `failed` (one message per failed unit)."""
    with session(stage, cfg, catalog) as cleaned:
        p = plan(stage, cfg, catalog, force, select)
        prepare(stage, cfg, catalog, p)
        results = run_units(stage, cfg, catalog, p.units, progress=progress, client=client)
        return finish(stage, cfg, catalog, p, results) | {"cleaned": cleaned}


def clean(stage: str, cfg: RunConfig, catalog: Catalog) -> list[str]:
    """Remove a killed run's debris (call under the stage's exclusive lock)."""
    removed = catalog.clean(cfg.dataset.name, stage)
    extra = getattr(module(stage), "clean", None)
    return removed + (extra(cfg, catalog) if extra else [])


def user_failures_only(summary: dict) -> bool:
    """Whether the summary's failed units all failed on the user's input or the machine's state
    (bad input, a missing or stale artifact, a full disk), none on a bug or a crashed worker."""
    failed = summary.get("failed") or []
    return bool(failed) and len(summary.get("user_failed") or []) == len(failed)


def format_failures(summary: dict) -> str:
    failed = summary.get("failed") or []
    if not failed:
        return ""
    lines = [f"{len(failed)} unit(s) FAILED (the others finished; rerun to retry the failed ones):"]
    lines += [f"  {m}" for m in failed]
    lines += [t.rstrip() for t in summary.get("traces") or []]
    return "\n".join(lines)
