"""One Prefect flow per stage, over the one stage runner (`stages.runner`).

Each takes the stage's locks and cleans a killed run's debris (`runner.session`), plans and
prepares (a task), fans the units out as tasks on a Dask task runner (a local cluster, or the
scheduler at `dask.address`, or the cluster the full flow started), then finishes (a task).
Arrays never pass through Prefect: units carry store paths and index ranges, results are small
summaries. A failed unit or a user error ends the flow in a Failed state with one message.
"""
from __future__ import annotations

import os
import time
from typing import Callable

from prefect import flow, get_run_logger, unmapped
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from flows.params import StageParams, TrainParams
from flows.tasks import finish_task, plan_task, unit_task
from flows.workers import collect
from pipeline.config import DaskConfig, RunConfig, load_config
from pipeline.errors import UserError
from stages import runner
from store.catalog import Catalog, Stage
from store.provenance import RANDOM_WEIGHTS_BANNER

# Stages with many independent units fan out over Dask; the others run in the flow's process.
DASK_STAGES = frozenset(Stage) - {Stage.MANIFEST, Stage.REPORT}


# What Dask's nanny would export to its workers (distributed.nanny.pre-spawn-environ), unset:
# - MALLOC_TRIM_THRESHOLD_=65536 turns off glibc's adaptive mmap threshold, so every tensor over
#   128 KiB is a fresh mmap and its page faults: a demo head trained in 19.8 s on a worker against
#   12.7 s without it (docs/demo.md).
# - OMP/MKL/OPENBLAS_NUM_THREADS=1: each task sets torch's threads itself (runner.task_threads),
#   from the user's OMP_NUM_THREADS where set; the nanny also writes these into this process's
#   own environment, where they would read as the user's choice.
# None unsets a key (distributed.nanny._get_env_variables); the user's own environment still wins.
WORKER_ENVIRON = {f"distributed.nanny.pre-spawn-environ.{k}": None
                  for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                            "OPENBLAS_NUM_THREADS")}


def prepare_workers() -> None:
    """Call before starting local Dask workers: they inherit what this sets.

    Their environment (see WORKER_ENVIRON), and this process's Prefect API: without a
    PREFECT_API_URL every worker process would start an ephemeral Prefect server of its own
    (15-30 s each, once per stage); exporting the one this flow already runs on makes them all
    report to it.
    """
    import dask

    dask.config.set(WORKER_ENVIRON)
    if os.environ.get("PREFECT_API_URL"):
        return
    # Prefect has no public call that starts (or finds) the ephemeral API server and gives its
    # URL; SubprocessASGIServer is the process-wide singleton Prefect's own client starts when
    # PREFECT_API_URL is unset, so this reuses that one server rather than starting another.
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    if server.server_process is not None:
        os.environ["PREFECT_API_URL"] = server.api_url


def cluster_kwargs(dask: DaskConfig) -> dict:
    """The local Dask cluster of a run (distributed.LocalCluster's arguments): one place."""
    return {"n_workers": dask.n_workers, "threads_per_worker": dask.threads_per_worker,
            "processes": True, "dashboard_address": dask.dashboard_address}


def dask_task_runner(dask: DaskConfig, address: str | None = None) -> DaskTaskRunner:
    """The one way a flow gets its Dask task runner: the scheduler at `address` (or
    `dask.address`), else a local cluster of `cluster_kwargs` started for the flow."""
    prepare_workers()
    address = address or dask.address
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs=cluster_kwargs(dask))


def task_runner(cfg: RunConfig, stage: str, address: str | None = None):
    if stage not in DASK_STAGES:
        return ThreadPoolTaskRunner(max_workers=1)
    return dask_task_runner(cfg.dask, address)


def _units_flow(stage: str) -> Callable:
    @flow(name=f"{stage}-units", log_prints=True, validate_parameters=False)
    def units(cfg: RunConfig, force: bool, select: dict | None) -> dict:
        planned = plan_task(stage, cfg, force, select)
        if isinstance(planned, str):  # a user error, said in one line
            return {"error": planned}
        if not planned.units:
            get_run_logger().info("%s: every output is up to date (same inputs, parameters and "
                                  "code): skipped", stage)
        futures = unit_task.map(unmapped(stage), unmapped(cfg), planned.units) if planned.units else []
        results, no_workers = collect(stage, futures, planned.units, cfg.dask.no_workers_timeout_s)
        summary = finish_task(stage, cfg, planned, results)
        return summary | {"no_workers": no_workers} if no_workers else summary

    return units


def run_stage(stage: str, cfg: RunConfig, force: bool = False, select: dict | None = None,
              address: str | None = None) -> dict:
    """Run one stage under its locks (inside a flow); its summary, with `error` for a user
    error and `failed` for failed units."""
    t0 = time.perf_counter()
    try:
        with runner.session(stage, cfg, Catalog(cfg.store)) as cleaned:
            inner = _units_flow(stage).with_options(task_runner=task_runner(cfg, stage, address))
            summary = inner(cfg, force, select) | {"cleaned": cleaned}
    except UserError as e:  # locks: said in one line
        return {"error": f"{stage}: {e}"}
    logger = get_run_logger()
    if "error" not in summary:
        printer = getattr(runner.module(stage), "format_summary", None)
        if printer:
            logger.info("%s summary:\n%s", stage, printer(summary))
    if cfg.features.allow_random_weights and stage in ("features", "train", "evaluate", "report"):
        logger.warning(RANDOM_WEIGHTS_BANNER)
    logger.info("stage %s took %.1f s", stage, time.perf_counter() - t0)  # STAGE_TIME
    return summary


def failure(summary: dict) -> str | None:
    """The one message a failed stage ends with (None when it succeeded)."""
    if summary.get("error"):
        return summary["error"]
    if summary.get("no_workers"):  # the one line that says what to do, not every unit's
        return summary["no_workers"]
    failed = summary.get("failed") or []
    if failed:
        return f"{len(failed)} unit(s) failed: " + "; ".join(failed)
    return None


def _make(stage: str, params_model: type[StageParams]) -> Callable:
    def body(params: params_model):  # type: ignore[valid-type]
        try:
            cfg = load_config(params.config, params.merged_overrides())
        except UserError as e:
            return Failed(message=f"{stage}: {e}")
        select = params.selection() if isinstance(params, TrainParams) else None
        summary = run_stage(stage, cfg, params.force, select)
        message = failure(summary)
        return Failed(message=message) if message else summary

    body.__name__ = f"{stage}_flow"
    # Prefect builds the deployment's parameter schema from these (real classes, not strings).
    body.__annotations__ = {"params": params_model}
    return flow(name=f"aunet-{stage}", log_prints=True)(body)


# One flow per stage; prefect.yaml's entrypoints name them `flows/stage_flows.py:{stage}_flow`.
STAGE_FLOWS = {s.value: _make(s.value, TrainParams if s is Stage.TRAIN else StageParams) for s in Stage}
globals().update({f"{name}_flow": f for name, f in STAGE_FLOWS.items()})
