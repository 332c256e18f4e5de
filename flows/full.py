"""The full run: every stage in order, each as its own subflow (so a stage rerun alone, from its
own deployment, does exactly what it does here)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.params import STAGE_ORDER, FullParams
from flows.stage_flows import run_stage
from pipeline.config import load_config
from store.catalog import Catalog


@flow(name="aunet-full", log_prints=True)
def full_flow(params: FullParams) -> dict:
    unknown = [s for s in params.stages if s not in STAGE_ORDER]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {list(STAGE_ORDER)}")
    cfg = load_config(params.config, params.merged_overrides())
    summaries: dict[str, Any] = {}
    for stage in (s for s in STAGE_ORDER if s in params.stages):
        summaries[stage] = run_stage(stage, cfg, params.force)
    catalog = Catalog(cfg.store)
    get_run_logger().info(closing_message(catalog, cfg.dataset.name))
    return {"store": str(catalog.root), "reports": str(catalog.reports),
            "rendered": str(catalog.rendered(cfg.dataset.name)), "stages": list(summaries)}


def closing_message(catalog: Catalog, dataset: str) -> str:
    return (f"Done. Report tables (Parquet): {catalog.reports}\n"
            f"Rendered tables and figures: {catalog.rendered(dataset)}\n"
            f"Query them, e.g.:\n"
            f"  aunet query --store {catalog.root} \"SELECT variant, round(100*f1, 1) AS f1 FROM metrics "
            f"WHERE fold = 'mean' AND au = 'Avg' AND run = (SELECT max(run) FROM runs) ORDER BY f1 DESC\"\n"
            f"More example queries: docs/reports.md")


def run_full_flow(config_path: str, overrides: dict | None = None, force: bool = False) -> str:
    result = full_flow(FullParams(config=config_path, overrides=overrides or {}, force=force))
    return closing_message(Catalog(result["store"]), Path(result["rendered"]).name)
