"""Report sections on how far results can be trusted: calibration, validation-chosen
thresholds, results per subject group (tables `calibration`, `thresholds`, `groups`).

Each function returns the (kind, content) items of `stages.report.sections`; an empty list
when the run has no rows of that table.
"""
from __future__ import annotations

import math

import pandas as pd

CALIBRATION_NOTE = (
    "ECE: expected calibration error over 10 equal-width probability bins, the frame-weighted "
    "mean gap between a bin's mean probability and its fraction of frames labelled present (0 is "
    "perfect). Brier: mean squared difference between probability and label (lower is better; "
    "a model that always says the positive rate p scores p(1 - p)). Test folds only.")


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _num(x, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def calibration_table(calib: pd.DataFrame, name) -> tuple[list[str], list[list[str]]]:
    """ECE and Brier per AU (pooled folds) by variant, the all-AU row last."""
    m = calib[calib.fold == "pooled"]
    variants = list(dict.fromkeys(m.variant))
    header = ["AU"] + [f"{name(v)} {k}" for v in variants for k in ("ECE", "Brier")]
    rows = []
    for au in dict.fromkeys(m.au):
        cells = [au]
        for v in variants:
            r = m[(m.au == au) & (m.variant == v)]
            cells += ([_num(float(r.ece.iloc[0]), ".3f"), _num(float(r.brier.iloc[0]), ".3f")]
                      if len(r) else ["-", "-"])
        rows.append(cells)
    return header, rows


def calibration_sections(t: dict[str, pd.DataFrame], name) -> list[tuple[str, object]]:
    calib = t.get("calibration", pd.DataFrame())
    out: list[tuple[str, object]] = []
    for ev in sorted(calib.eval_dataset.unique()) if len(calib) else []:
        out.append(("h2", f"Calibration on {ev}: ECE and Brier per AU, test frames of all folds"))
        out.append(("p", CALIBRATION_NOTE))
        out.append(("table", calibration_table(calib[calib.eval_dataset == ev], name)))
    return out


def threshold_table(thr: pd.DataFrame, name) -> tuple[list[str], list[list[str]]]:
    """Per AU by variant: the validation threshold (mean over folds) and test F1 (%) at the fixed
    threshold and at the chosen one (mean of per-fold F1)."""
    m = thr[thr.fold == "mean"]
    variants = list(dict.fromkeys(m.variant))
    fixed = float(m.fixed_threshold.iloc[0])
    header = ["AU"] + [f"{name(v)} {k}" for v in variants
                       for k in ("threshold", f"F1 at {fixed:g}", "F1 at threshold")]
    rows = []
    for au in dict.fromkeys(m.au):
        cells = [au]
        for v in variants:
            r = m[(m.au == au) & (m.variant == v)]
            cells += ([_num(float(r.threshold.iloc[0]), ".2f"), _pct(float(r.f1_fixed.iloc[0])),
                       _pct(float(r.f1_chosen.iloc[0]))] if len(r) else ["-"] * 3)
        rows.append(cells)
    return header, rows


def threshold_sections(t: dict[str, pd.DataFrame], name) -> list[tuple[str, object]]:
    thr = t.get("thresholds", pd.DataFrame())
    out: list[tuple[str, object]] = []
    for ev in sorted(thr.eval_dataset.unique()) if len(thr) else []:
        mine = thr[thr.eval_dataset == ev]
        folds = mine[(mine.fold != "mean") & (mine.au == "Avg")].drop_duplicates("fold")
        held = "; ".join(f"fold {r.fold}: {r.n_val_subjects} subjects ({', '.join(r.val_subjects)}), "
                         f"{r.n_val_frames} frames" for r in folds.itertuples())
        out.append(("h2", f"Thresholds chosen on validation subjects, F1 (%) on the test folds of {ev}"))
        out.append(("p", "Each AU's threshold is the best-F1 point of a 0.05 grid on the frames of "
                         "validation subjects held out of the fold's training data (never a test "
                         f"frame; the heads were trained without them). Held out: {held}. "
                         "F1 columns: mean over folds of test F1 at the fixed threshold and at the "
                         "chosen one, the same heads."))
        out.append(("table", threshold_table(mine, name)))
    return out


def sections(t: dict[str, pd.DataFrame], name) -> list[tuple[str, object]]:
    """Every trust section of a run, in report order; `name` maps a variant to its label."""
    return calibration_sections(t, name) + threshold_sections(t, name)
