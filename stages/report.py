"""Stage 6: render the latest evaluation run as paper-style tables (Markdown, HTML) and PNGs,
and answer SQL over the report tables (`run_query`, DuckDB).

Everything is read from the Parquet report tables of the dataset's latest complete run, so a
report can be rebuilt at any time without the models or features.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.config import RunConfig
from store import mix, tables
from store.catalog import Catalog
from pipeline.errors import MissingArtifact
from stages import report_trust
from stages.contract import Plan, UnitResult
from store.codekey import code_key
from store.identity import eval_id
from store.provenance import (RANDOM_WEIGHTS_BANNER, artifact_key, atomic_path, read_provenance,
                              record, trusted, write_provenance)

STAGE = "report"
VARIANT_NAMES = {"au_fan": "AU-FAN", "au_vae": "AU-VAE", "au_tdn": "AU-TDN", "aunet": "AUNet",
                 "all_positive": "All present (baseline)", "fan_backbone": "frozen FAN"}
BASELINE_NOTE = ("All present (baseline): every frame with a face predicted positive for every AU, "
                 "scored on the same frames; its F1 per AU is 2p / (1 + p), p the positive rate. "
                 "A model that does not beat it has learned nothing about that AU.")
UNIT_NAMES = {"frame_accuracy": "frame: accuracy over AUs", "frame_f1": "frame: example F1",
              "subject_f1": "subject: F1 over AUs", "avg_f1": "Avg F1, subjects resampled"}


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


def _name(v: str) -> str:
    return VARIANT_NAMES.get(v, v)


def _num(x, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table; first column left-aligned, the others right-aligned."""
    align = [":---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def f1_table(metrics: pd.DataFrame, eval_dataset: str, fold: str) -> tuple[list[str], list[list[str]]]:
    """Per-AU F1 (%) by variant, AUs as rows and Avg last (paper's Tables VII-IX layout), the
    all-present baseline beside the models and the positive rate (%) last."""
    m = metrics[(metrics.eval_dataset == eval_dataset) & (metrics.fold == fold)]
    variants = [v for v in VARIANT_NAMES if v in set(m.variant)]
    aus = list(dict.fromkeys(m.au))
    f1 = m.pivot_table(index="au", columns="variant", values="f1", sort=False)
    header = ["Methods"] + [_name(v) for v in variants]
    rate = None
    if "positive_rate" in m:
        rate = m.drop_duplicates("au").set_index("au").positive_rate
        header.append("Positive rate")
    rows = [[au] + [_num(100 * f1.loc[au, v], ".1f") for v in variants]
            + ([] if rate is None else [_num(100 * rate.loc[au], ".1f")]) for au in aus]
    return header, rows


def headline(metrics: pd.DataFrame, eval_dataset: str) -> list[tuple[str, float, float]]:
    """(variant, Avg F1, margin over the all-present baseline) of each model, mean over folds."""
    m = metrics[(metrics.eval_dataset == eval_dataset) & (metrics.fold == "mean") & (metrics.au == "Avg")]
    f1 = m.set_index("variant").f1
    base = float(f1.get("all_positive", float("nan")))
    return [(v, float(f1[v]), float(f1[v]) - base) for v in VARIANT_NAMES if v in f1.index]


def headline_text(metrics: pd.DataFrame, eval_dataset: str) -> str:
    return "; ".join(f"{_name(v)} {100 * f:.1f}" + ("" if v == "all_positive" else f" ({100 * d:+.1f})")
                     for v, f, d in headline(metrics, eval_dataset))


def significance_table(sig: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["Eval data", "Baseline", "Method", "Paired unit", "n", "t-statistic", "p-value",
              "Diff (method - baseline)", "95% CI"]
    rows = []
    for r in sig.itertuples():
        ci = "-" if math.isnan(r.ci_lo) else f"[{r.ci_lo:+.4f}, {r.ci_hi:+.4f}]"
        rows.append([r.eval_dataset, _name(r.baseline), _name(r.variant),
                     UNIT_NAMES.get(r.unit, r.unit), str(r.n),
                     _num(r.t, ".2f"), _num(r.p, ".3g"), _num(r.diff, "+.4f"), ci])
    return header, rows


def cooccurrence_table(cooc: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["Eval data", "Method", "Fold", "L2 distance", "L2 (rms)", "Dependency F1",
              "Edges pred / label / matched", "Frames"]
    rows = [[r.eval_dataset, _name(r.variant), r.fold, f"{r.l2:.3f}", f"{r.l2_rms:.3f}",
             f"{100 * r.dependency_f1:.1f}", f"{r.edges_pred} / {r.edges_label} / {r.edges_matched}",
             str(r.n)] for r in cooc.itertuples()]
    return header, rows


def complexity_table(comp: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    header = ["Method", "Trainable params (M)", "GFLOPs (torch)", "GMACs", "Paper params (M)",
              "Paper GFLOPs"]
    rows = [[_name(r.variant), f"{r.trainable_params / 1e6:.2f}", f"{r.gflops:.2f}", f"{r.gmacs:.2f}",
             _num(r.paper_params_m, ".2f"), _num(r.paper_gflops, ".2f")] for r in comp.itertuples()]
    return header, rows


def comparison_table(comp: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Mixed vs single-dataset models: F1 (%) per AU, mean of per-fold F1."""
    header = ["Eval data", "Method", "AU", "Single-dataset", "Mixed", "Diff"]
    m = comp[comp.fold == "mean"]
    rows = [[r.eval_dataset, _name(r.variant), r.au, f"{100 * r.f1_single:.1f}",
             f"{100 * r.f1_mixed:.1f}", f"{100 * r.diff:+.1f}"] for r in m.itertuples()]
    return header, rows


def sections(t: dict[str, pd.DataFrame], dataset: str, run: str, random_weights: bool,
             members: tuple[str, ...] = ()) -> list[tuple[str, object]]:
    """The report as (kind, content): kind 'h1' / 'h2' / 'p' (text) or 'table' ((header, rows))."""
    out: list[tuple[str, object]] = []
    if random_weights:
        out.append(("banner", RANDOM_WEIGHTS_BANNER))
    out.append(("h1", f"AU detection report: {dataset}, run {run}"))
    metrics = t["metrics"]
    if "all_positive" in set(metrics.variant):
        out.append(("p", f"Avg F1 (%) on {dataset}, mean of per-fold F1 (in brackets: above or "
                         f"below the all-present baseline): {headline_text(metrics, dataset)}."))
        out.append(("p", BASELINE_NOTE))
    for ev in sorted(metrics.eval_dataset.unique()):
        kind = ("within-dataset" if ev == dataset else
                f"member of the mixed training data {dataset}, on its own AUs" if ev in members
                else f"cross-dataset (models trained on {dataset})")
        titles = {"mean": f"F1 (%) on {ev}, {kind}: mean of per-fold F1 (the paper's protocol)",
                  "pooled": f"F1 (%) on {ev}: pooled over the test frames of all folds"}
        for fold, title in titles.items():
            header, rows = f1_table(metrics, ev, fold)
            if rows:
                out += [("h2", title), ("table", (header, rows))]
    if len(t.get("comparison", ())):
        out.append(("h2", "Mixed vs single-dataset models: F1 (%) per member dataset, mean of "
                          "per-fold F1, the same test frames"))
        out.append(("table", comparison_table(t["comparison"])))
    if len(t["significance"]):
        out.append(("h2", "Paired tests between AU-FAN and its variants (paper's Table XII)"))
        out.append(("p", "t and p: scipy.stats.ttest_rel(baseline, method) on the paired unit; "
                         "t < 0 means the method scores higher. Diff: method minus baseline."))
        out.append(("table", significance_table(t["significance"])))
    if len(t["cooccurrence"]):
        out.append(("h2", "Co-occurrence faithfulness (paper's Table X), pooled over folds"))
        out.append(("table", cooccurrence_table(t["cooccurrence"][t["cooccurrence"].fold == "pooled"])))
    out += report_trust.sections(t, _name)
    if len(t["complexity"]):
        out.append(("h2", "Model complexity per sample"))
        out.append(("p", "GFLOPs (torch) counts 2 per multiply-add; the paper's figures match GMACs."))
        out.append(("table", complexity_table(t["complexity"])))
    return out


def render_markdown(secs: list[tuple[str, object]]) -> str:
    parts = []
    for kind, c in secs:
        if kind == "banner":
            parts.append(f"> **{c}**")
        elif kind in ("h1", "h2"):
            parts.append(("# " if kind == "h1" else "## ") + str(c))
        elif kind == "p":
            parts.append(str(c))
        else:
            parts.append(markdown_table(*c))
    return "\n\n".join(parts) + "\n"


FIGURE_TITLES = {"f1_bars": "Per-AU F1 by method, the all-present baseline in grey",
                 "correlation": "AU correlations: labels beside each method's predictions",
                 "timeline": "One test video: probabilities against the labels",
                 "reliability": "Reliability diagram: fraction labelled present against mean probability"}
STYLE = ("body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;"
         "color:#222;line-height:1.4}h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em;"
         "border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:1em 0;font-size:.92em}"
         "td,th{border:1px solid #bbb;padding:3px 9px;text-align:right}th{background:#f2f2f2}"
         "td:first-child,th:first-child{text-align:left}"
         "figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #ddd}"
         "figcaption{color:#555;font-size:.9em}.note{color:#555}"
         ".banner{background:#b00000;color:#fff;font-weight:bold;padding:1em;font-size:1.1em}")


def _figure(path: Path) -> str:
    """A PNG inlined as a data URI: the page is one self-contained file."""
    import base64

    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    title = next((t for k, t in FIGURE_TITLES.items() if path.stem.startswith(k)), path.stem)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(title)}">'
            f"<figcaption>{html.escape(title)} ({html.escape(path.name)})</figcaption></figure>")


def render_html(secs: list[tuple[str, object]], images: list[Path]) -> str:
    body = []
    for kind, c in secs:
        if kind == "banner":
            body.append(f'<div class="banner">{html.escape(str(c))}</div>')
        elif kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(str(c))}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(str(c))}</p>")
        else:
            body.append(html_table(*c))
    if images:
        body.append("<h2>Figures</h2>")
        body += [_figure(p) for p in images]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>AU report</title>"
            f"<meta name='viewport' content='width=device-width'><style>{STYLE}</style></head>"
            f"<body>\n" + "\n".join(body) + "\n</body></html>\n")


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
    from stages import report_figures as figs

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
