"""The full run: every stage in order, each as its own subflow (so a stage rerun alone, from its
own deployment, does exactly what it does here), on one local Dask cluster for the whole run."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from prefect import flow, get_run_logger
from prefect.states import Failed

from flows.params import FullParams
from flows.stage_flows import DASK_STAGES, cluster_kwargs, failure, prepare_workers, run_stage
from pipeline.config import RunConfig, load_config
from pipeline.errors import UserError
from stages import runner
from store.catalog import Catalog

# How the full flow's Failed message starts when the failure was the user's (exit code 2).
USER_FAILED = "bad input: "


@contextmanager
def cluster(cfg: RunConfig, stages: list[str]) -> Iterator[str | None]:
    """The Dask scheduler address every stage of this run uses: the config's, or one local
    cluster started once for the whole run (not one per stage); None when no stage needs one."""
    if cfg.dask.address or not DASK_STAGES & set(stages):
        yield cfg.dask.address
        return
    from distributed import LocalCluster

    prepare_workers()  # before the workers start: they inherit it
    with LocalCluster(**cluster_kwargs(cfg.dask)) as lc:
        yield lc.scheduler_address


@flow(name="aunet-full", log_prints=True)
def full_flow(params: FullParams):
    try:
        cfg = load_config(params.config, params.merged_overrides())
    except UserError as e:
        return Failed(message=f"{USER_FAILED}config: {e}")
    stages = params.stage_names()
    with cluster(cfg, stages) as address:
        for stage in stages:
            select = params.selection() if stage == "train" else None
            summary = run_stage(stage, cfg, params.force, select, address)
            message = failure(summary)
            if message:
                user = bool(summary.get("error")) or runner.user_failures_only(summary)
                return Failed(message=f"{USER_FAILED if user else ''}stage {stage} failed: {message}")
    catalog = Catalog(cfg.store)
    get_run_logger().info(closing_message(cfg))
    return {"store": str(catalog.root), "reports": str(catalog.reports),
            "rendered": str(catalog.rendered(cfg.dataset.name)), "stages": stages}


def closing_message(cfg: RunConfig) -> str:
    """The headline numbers of this config's evaluation run (Avg F1 per method next to the
    all-present baseline) and where the report is."""
    from stages.report_sections import headline
    from store import tables
    from store.identity import eval_id
    from store.provenance import RANDOM_WEIGHTS_BANNER

    catalog, name = Catalog(cfg.store), cfg.dataset.name
    lines = ["Done."]
    run = tables.latest_run(catalog, name, eval_id(cfg))
    if run is not None:
        runs = tables.read_run(catalog, "runs", name, run).to_pylist()[0]
        if runs["random_weights"]:
            lines.append(RANDOM_WEIGHTS_BANNER)
        metrics = tables.read_run(catalog, "metrics", name, run).to_pandas()
        lines.append(f"Avg F1 (%) on {name}, mean of per-fold F1 on held-out subjects, run {run}:")
        for v, f1, margin in headline(metrics, name):
            note = "" if v == "all_positive" else f"  ({100 * margin:+.1f} vs all present)"
            lines.append(f"  {v:<14}{100 * f1:6.1f}{note}")
    lines += [f"Report (open in a browser): {catalog.rendered(name) / 'report.html'}",
              f"Report tables (Parquet): {catalog.reports}",
              "Query them, e.g.:",
              f"  aunet query --store {catalog.root} \"SELECT variant, round(100*f1, 1) AS f1 FROM "
              f"metrics WHERE fold = 'mean' AND au = 'Avg' AND run = (SELECT max(run) FROM runs) "
              f"ORDER BY f1 DESC\"",
              "More example queries: docs/reports.md"]
    return "\n".join(lines)


def run_full_flow(config_path: str, overrides: dict | None = None,
                  force: bool = False) -> tuple[bool, str, bool]:
    """(succeeded, the closing message or the failure's one message, whether the failure was
    the user's input or state: a bad config or input, a missing or stale artifact, a lock)."""
    state = full_flow(FullParams(config=config_path, overrides=overrides or {}, force=force),
                      return_state=True)
    if state.is_failed():
        message = state.message or ""
        return False, f"aunet run: FAILED: {message}", message.startswith(USER_FAILED)
    return True, closing_message(load_config(config_path, overrides)), False
