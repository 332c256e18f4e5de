"""Stage 6: render the latest evaluation run as paper-style tables (Markdown, HTML) and PNGs
(content: stages/report_sections.py; Markdown and HTML: stages/report_render.py).

Everything is read from the Parquet report tables of the dataset's latest complete run, so a
report can be rebuilt at any time without the models or features.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.config import RunConfig
from store import mix, tables
from store.catalog import Catalog
from pipeline.errors import MissingArtifact
from stages.contract import Plan, UnitResult
from store.codekey import code_key
from store.identity import eval_id
from store.provenance import (RANDOM_WEIGHTS_BANNER, artifact_key, atomic_path, read_provenance,
                              record, trusted, write_provenance)
from stages.report_render import render_html, render_markdown
from stages.report_sections import sections

STAGE = "report"


@dataclass(frozen=True)
class ReportUnit:
    dataset: str
    run: str
    key: str

    @property
    def name(self) -> str:
        return f"report-{self.run}"

    size = 0

    def __str__(self) -> str:  # task names in Prefect
        return self.name




# -- the stage ----------------------------------------------------------------------------------
def reads(cfg: RunConfig) -> list[tuple[str, str]]:
    return [(cfg.dataset.name, "evaluate")]


def run_tables(catalog: Catalog, dataset: str, run: str) -> tuple[dict[str, pd.DataFrame], dict]:
    """({table: rows of that run}, its runs row)."""
    out = {name: tables.read_run(catalog, name, dataset, run).to_pandas() for name in tables.TABLES}
    return out, out["runs"].iloc[0].to_dict()


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _config(cfg: RunConfig) -> dict:
    return {"timeline_video": cfg.eval.timeline_video, "threshold": cfg.eval.threshold}


def plan(cfg: RunConfig, catalog: Catalog, *, force: bool = False, select=None) -> Plan:
    """The newest complete evaluation run of exactly this config's request, if not rendered."""
    run = tables.latest_run(catalog, cfg.dataset.name, eval_id(cfg))
    if run is None:
        raise MissingArtifact(f"no complete evaluation run of this config for dataset "
                              f"'{cfg.dataset.name}' under {catalog.reports}; run `aunet evaluate` "
                              "first")
    unit = ReportUnit(cfg.dataset.name, run, artifact_key(_config(cfg), {"run": run},
                                                          code_key("stages.report")))
    md = catalog.rendered(cfg.dataset.name) / "report.md"
    if not force and trusted(md, unit.key) is not None:
        return Plan([], [unit.name], {"run": run})
    return Plan([unit], [], {"run": run})


def prepare(cfg: RunConfig, catalog: Catalog, plan: Plan) -> None:
    """Nothing to create: the unit writes each file atomically."""


def run_unit(cfg: RunConfig, catalog: Catalog, unit: ReportUnit, progress=None) -> dict:
    from stages import report_figures as figs  # matplotlib: imported only when a report renders

    t, runs_row = run_tables(catalog, unit.dataset, unit.run)
    run = unit.run
    rw = bool(runs_row["random_weights"])
    banner = RANDOM_WEIGHTS_BANNER if rw else None
    out = catalog.rendered(unit.dataset)
    images = []
    members = tuple(m.dataset.name for m in mix.members(cfg)) if mix.is_mix(cfg) else ()
    for ev in sorted(t["metrics"].eval_dataset.unique()):
        mean = t["metrics"][t["metrics"].fold == "mean"]
        images.append(figs.f1_bars(mean, ev, out / f"f1_bars_{ev}.png", banner))
        if (t["cooccurrence"].get("eval_dataset", pd.Series(dtype=str)) == ev).any():
            images.append(figs.correlation_heatmaps(t["cooccurrence"], ev, out / f"correlation_{ev}.png", banner))
        if (t["calibration"].get("eval_dataset", pd.Series(dtype=str)) == ev).any():
            images.append(figs.reliability(t["calibration"], ev, out / f"reliability_{ev}.png", banner))
    pred = t["predictions"]
    own = pred[pred.eval_dataset.isin((unit.dataset, *members))]  # a mix's rows carry the member
    video = cfg.eval.timeline_video or (sorted(own.video_id.unique())[0] if len(own) else None)
    if video is not None:
        ev_of_video = own[own.video_id == video].eval_dataset
        scored = ev_of_video.iloc[0] if len(ev_of_video) else unit.dataset
        aus = t["metrics"][(t["metrics"].eval_dataset == scored) & (t["metrics"].au != "Avg")].au.unique()
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(video))
        images.append(figs.timeline(own, list(aus), video, out / f"timeline_{safe}.png",
                                    cfg.eval.threshold, banner))
    secs = sections(t, unit.dataset, run, rw, members)
    files = {"markdown": out / "report.md", "html": out / "report.html"}
    _write_text(files["html"], render_html(secs, images))
    _write_text(files["markdown"], render_markdown(secs) + "\n" + "\n".join(
        f"![{p.stem}]({p.name})" for p in images) + "\n")
    written = [files["html"], *images, files["markdown"]]
    for p in written:  # markdown last: its provenance marks the rendering as current
        rec = record(stage=STAGE, name=catalog.rel(p), identity=_config(cfg), inputs={"run": run},
                     code=code_key("stages.report"), extra={"random_weights": rw})
        write_provenance(p, rec)
    return {"run": run, "files": [str(p) for p in written], "random_weights": rw,
            "timeline_video": video}


def finish(cfg: RunConfig, catalog: Catalog, plan: Plan, results: list[UnitResult]) -> dict:
    out = catalog.rendered(cfg.dataset.name)
    done = [r for r in results if r.ok]
    if done:
        return done[0].data | {"dataset": cfg.dataset.name, "skipped": False,
                               "store": str(catalog.root)}
    files = sorted(str(p) for p in out.glob("*") if not p.name.endswith(".provenance.json"))
    rec = read_provenance(out / "report.md") or {}
    return {"dataset": cfg.dataset.name, "skipped": not results, "run": plan.context["run"],
            "files": files if not results else [], "random_weights": bool(rec.get("random_weights")),
            "store": str(catalog.root)}


def format_summary(summary: dict) -> str:
    lines = [RANDOM_WEIGHTS_BANNER] if summary.get("random_weights") else []
    state = "up to date" if summary["skipped"] else "rendered"
    lines.append(f"report, dataset {summary['dataset']}, run {summary['run']} ({state}):")
    lines += [f"  {f}" for f in summary["files"]]
    store = summary["store"]
    lines += ["examples:",
              f"  aunet query --store {store} \"SELECT variant, round(100*f1, 1) AS f1 FROM metrics "
              "WHERE fold = 'mean' AND au = 'Avg' ORDER BY f1 DESC\"",
              f"  aunet query --store {store} \"SELECT variant, unit, n, t, p FROM significance\"",
              f"  aunet query --store {store} \"SELECT run, dataset, random_weights FROM runs ORDER BY run\""]
    return "\n".join(lines)
