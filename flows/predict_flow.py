"""The `aunet-predict/predict` deployment: `aunet predict` over many videos, one task per input,
fanned out on a Dask task runner (a local cluster, or the scheduler at `dask_address`)."""
from __future__ import annotations

from typing import Optional

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed
from pydantic import BaseModel, ConfigDict, Field

from flows.stage_flows import dask_task_runner
from pipeline.config import DaskConfig, FacesMode, OutputFormat, PredictConfig, TemporalMode
from pipeline.errors import UserError
from stages import predict, runner
from stages.contract import UnitResult


class PredictParams(BaseModel):
    """The deployment's one parameter `params` (unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[str] = Field(description="video files, image files, folders (on the workers' paths)")
    model: str = Field(description="a bundle folder")
    out: str = Field(description="output folder")
    format: OutputFormat = OutputFormat.CSV
    faces: FacesMode = FacesMode.LARGEST
    temporal: Optional[TemporalMode] = None
    tta_flip: Optional[bool] = None
    sequence: bool = False
    save_aligned: bool = False
    render: bool = False
    skip_existing: bool = True
    allow_random_weights: bool = False
    dask_address: Optional[str] = None
    n_workers: int = 1

    def config(self) -> PredictConfig:
        fields = self.model_dump(exclude={"dask_address", "n_workers"})
        return predict.make_config(**fields, dask=DaskConfig(address=self.dask_address,
                                                             n_workers=self.n_workers))


@task(name="predict-input", cache_policy=NO_CACHE, task_run_name="predict-{unit}")
def predict_task(cfg: PredictConfig, unit: predict.PredictUnit) -> UnitResult:
    return runner.run_unit(predict.STAGE, cfg, None, unit, threads=runner.task_threads(cfg),
                           fn=predict.run_unit)


@flow(name="aunet-predict-inputs", log_prints=True, validate_parameters=False)
def _inputs_flow(cfg: PredictConfig, units: list) -> list[UnitResult]:
    return [f.result() for f in predict_task.map(unmapped(cfg), units)]


def on_dask(cfg: PredictConfig, units: list[predict.PredictUnit]) -> list[UnitResult]:
    """predict.run's `map_units`: one Prefect task per input on a Dask task runner."""
    return _inputs_flow.with_options(task_runner=dask_task_runner(cfg.dask))(cfg, units)


@flow(name="aunet-predict", log_prints=True)
def predict_flow(params: PredictParams):
    """`predict.run`, the command line's own function, with the units mapped on Dask."""
    try:
        summary = predict.run(params.config(), progress=False, map_units=on_dask)
    except UserError as e:
        return Failed(message=f"predict: {e}")
    get_run_logger().info("predict summary:\n%s", predict.format_summary(summary))
    failed = summary["failed"]
    if failed:
        return Failed(message=f"{len(failed)} input(s) failed: " + "; ".join(failed))
    return summary
