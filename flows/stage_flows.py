"""One Prefect flow per stage. Each loads its config, takes the stage's store lock, plans,
fans the units out as tasks on a Dask task runner (a local cluster, or the scheduler at
`dask.address` in the config), then finishes. Arrays never pass through Prefect: units carry
store paths and index ranges, results are small summaries.
"""
import importlib
from typing import Callable

from prefect import flow, get_run_logger, unmapped
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from flows.params import StageParams, TrainParams
from flows.tasks import finish_task, plan_task, unit_task
from pipeline.config import RunConfig, load_config
from store.catalog import Catalog
from store.provenance import RANDOM_WEIGHTS_BANNER

# Stages with many independent units fan out over Dask; the others run in the flow's process.
DASK_STAGES = {"faces", "features", "prior", "train", "evaluate"}


def dask_runner(cfg: RunConfig) -> DaskTaskRunner:
    if cfg.dask.address:
        return DaskTaskRunner(address=cfg.dask.address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.dask.n_workers,
                                          "threads_per_worker": cfg.dask.threads_per_worker,
                                          "processes": True})


def _units_flow(stage: str) -> Callable:
    @flow(name=f"{stage}-units", log_prints=True, validate_parameters=False)
    def units(cfg: RunConfig, force: bool) -> dict:
        planned = plan_task(stage, cfg, force)
        logger = get_run_logger()
        if not planned:
            logger.info("%s: every output is up to date (same inputs, parameters and code): skipped", stage)
        futures = unit_task.map(unmapped(stage), unmapped(cfg), planned) if planned else []
        results = [f.result() for f in futures]
        return finish_task(stage, cfg, results)

    return units


def run_stage(stage: str, cfg: RunConfig, force: bool) -> dict:
    """Run one stage under its store lock; the units flow gets the right task runner."""
    inner = _units_flow(stage)
    runner = dask_runner(cfg) if stage in DASK_STAGES else ThreadPoolTaskRunner(max_workers=1)
    with Catalog(cfg.store).lock(cfg.dataset.name, stage):
        summary = inner.with_options(task_runner=runner)(cfg, force)
    printer = getattr(importlib.import_module(f"stages.{stage}"), "format_summary", None)
    logger = get_run_logger()
    if printer:
        logger.info("%s summary:\n%s", stage, printer(summary))
    if cfg.features.allow_random_weights and stage in ("features", "train", "evaluate", "report"):
        logger.warning(RANDOM_WEIGHTS_BANNER)
    return summary


def _make(stage: str, params_model: type[StageParams]) -> Callable:
    def body(params: params_model) -> dict:  # type: ignore[valid-type]
        overrides = params.merged_overrides() if isinstance(params, TrainParams) else params.overrides
        return run_stage(stage, load_config(params.config, overrides), params.force)

    body.__name__ = f"{stage}_flow"
    # Prefect builds the deployment's parameter schema from these (real classes, not strings).
    body.__annotations__ = {"params": params_model, "return": dict}
    return flow(name=f"aunet-{stage}", log_prints=True)(body)


manifest_flow = _make("manifest", StageParams)
faces_flow = _make("faces", StageParams)
features_flow = _make("features", StageParams)
prior_flow = _make("prior", StageParams)
train_flow = _make("train", TrainParams)
evaluate_flow = _make("evaluate", StageParams)
report_flow = _make("report", StageParams)

STAGE_FLOWS = {"manifest": manifest_flow, "faces": faces_flow, "features": features_flow,
               "prior": prior_flow, "train": train_flow, "evaluate": evaluate_flow,
               "report": report_flow}
