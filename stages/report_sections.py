"""The report's content as sections: headline, F1 tables per dataset and fold, the paired
tests, co-occurrence, complexity, the mixed-vs-single comparison (rendered by report_render)."""
from __future__ import annotations

import math

import pandas as pd

from stages import report_trust
from stages.report_render import number as _num
from store.provenance import RANDOM_WEIGHTS_BANNER

VARIANT_NAMES = {"au_fan": "AU-FAN", "au_vae": "AU-VAE", "au_tdn": "AU-TDN", "aunet": "AUNet",
                 "all_positive": "All present (baseline)", "fan_backbone": "frozen FAN"}
BASELINE_NOTE = ("All present (baseline): every frame with a face predicted positive for every AU, "
                 "scored on the same frames; its F1 per AU is 2p / (1 + p), p the positive rate. "
                 "A model that does not beat it has learned nothing about that AU.")
UNIT_NAMES = {"frame_accuracy": "frame: accuracy over AUs", "frame_f1": "frame: example F1",
              "subject_f1": "subject: F1 over AUs", "avg_f1": "Avg F1, subjects resampled"}



def _name(v: str) -> str:
    return VARIANT_NAMES.get(v, v)





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


