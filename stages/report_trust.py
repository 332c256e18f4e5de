"""Report sections on how far results can be trusted: calibration, validation-chosen
thresholds, results per subject group (tables `calibration`, `thresholds`, `groups`).

Each function returns the (kind, content) items of `stages.report.sections`; an empty list
when the run has no rows of that table.
"""
from __future__ import annotations

import math

import pandas as pd

from stages.report_render import number as _num

CALIBRATION_NOTE = (
    "ECE: expected calibration error over 10 equal-width probability bins, the frame-weighted "
    "mean gap between a bin's mean probability and its fraction of frames labelled present (0 is "
    "perfect). Brier: mean squared difference between probability and label (lower is better; "
    "a model that always says the positive rate p scores p(1 - p)). Test folds only.")


ORDER = ("au_fan", "au_vae", "au_tdn", "aunet")  # the report's order of the variants


def _variants(values) -> list[str]:
    """The variants present, in the report's order (others after, as found)."""
    found = list(dict.fromkeys(values))
    return [v for v in ORDER if v in found] + [v for v in found if v not in ORDER]


def _pct(x) -> str:
    return _num(None if x is None else 100 * x, ".1f")


def _per_au(m: pd.DataFrame, variants: list[str], cells, width: int) -> list[list[str]]:
    """One row per AU (in the table's order): the AU, then `cells(row)` of each variant's row,
    or `width` dashes where that variant has none."""
    rows = []
    for au in dict.fromkeys(m.au):
        row = [au]
        for v in variants:
            r = m[(m.au == au) & (m.variant == v)]
            row += cells(r.iloc[0]) if len(r) else ["-"] * width
        rows.append(row)
    return rows


def calibration_table(calib: pd.DataFrame, name) -> tuple[list[str], list[list[str]]]:
    """ECE and Brier per AU (pooled folds) by variant, the all-AU row last."""
    m = calib[calib.fold == "pooled"]
    variants = _variants(m.variant)
    header = ["AU"] + [f"{name(v)} {k}" for v in variants for k in ("ECE", "Brier")]
    return header, _per_au(m, variants, lambda r: [_num(float(r.ece), ".3f"),
                                                   _num(float(r.brier), ".3f")], 2)


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
    variants = _variants(m.variant)
    fixed = float(m.fixed_threshold.iloc[0])
    header = ["AU"] + [f"{name(v)} {k}" for v in variants
                       for k in ("threshold", f"F1 at {fixed:g}", "F1 at threshold")]
    return header, _per_au(m, variants, lambda r: [_num(float(r.threshold), ".2f"),
                                                   _pct(float(r.f1_fixed)),
                                                   _pct(float(r.f1_chosen))], 3)


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


def _ci(r) -> str:
    return "-" if math.isnan(r.ci_lo) else f"[{100 * r.ci_lo:.1f}, {100 * r.ci_hi:.1f}]"


def group_avg_table(g: pd.DataFrame, name) -> tuple[list[str], list[list[str]]]:
    """One attribute: per group its subjects, status and each variant's Avg F1 (%) with CI."""
    avg = g[g.au == "Avg"]
    variants = _variants(avg.variant)
    header = ["Group", "Subjects", "Frames", "Status"] + [f"{name(v)} Avg F1 [95% CI]" for v in variants]
    rows = []
    for k in dict.fromkeys(avg.group):
        mine = avg[avg.group == k]
        first = mine.iloc[0]
        cells = [str(k), str(first.n_subjects), str(first.n_frames),
                 "too small (< 3 subjects), not tested" if first.status == "too_small" else first.status]
        for v in variants:
            r = mine[mine.variant == v]
            cells.append(f"{_pct(float(r.f1.iloc[0]))} {_ci(r.iloc[0])}" if len(r) else "-")
        rows.append(cells)
    return header, rows


def group_au_table(g: pd.DataFrame, variant: str) -> tuple[list[str], list[list[str]]]:
    """One attribute and variant: F1 (%) per AU (rows) and group (columns)."""
    m = g[g.variant == variant]
    groups = list(dict.fromkeys(m.group))
    f1 = m.pivot_table(index="au", columns="group", values="f1", sort=False)
    return ["AU"] + groups, [[au] + [_pct(float(f1.loc[au, k])) for k in groups]
                             for au in dict.fromkeys(m.au)]


def group_sections(t: dict[str, pd.DataFrame], name) -> list[tuple[str, object]]:
    grp = t.get("groups", pd.DataFrame())
    out: list[tuple[str, object]] = []
    for attr in dict.fromkeys(grp.attribute) if len(grp) else []:
        g = grp[grp.attribute == attr]
        avg = g[(g.au == "Avg") & (g.status == "tested")].drop_duplicates("variant")
        avg = avg.set_index("variant").loc[_variants(avg.variant)].reset_index()
        tests = "; ".join(f"{name(r.variant)}: spread {100 * r.spread:.1f} points, p = {r.p_perm:.3g} "
                          f"({r.n_perm} permutations)" for r in avg.itertuples())
        out.append(("h2", f"F1 per group of subjects: {attr} ({g.source.iloc[0]}), test frames of "
                          "all folds"))
        out.append(("p", "F1 pooled over each group's subjects; 95% interval: the group's subjects "
                         "resampled with replacement. Permutation test of 'Avg F1 does not depend "
                         "on the group' (the subjects' group labels shuffled; spread = highest "
                         "minus lowest group Avg F1): " + (tests or "not run (fewer than two groups "
                                                                    "of 3 or more subjects)") + "."))
        out.append(("table", group_avg_table(g, name)))
        for v in _variants(g.variant):
            out.append(("p", f"{name(v)}: F1 (%) per AU and group ({attr})"))
            out.append(("table", group_au_table(g, v)))
    return out


def sections(t: dict[str, pd.DataFrame], name) -> list[tuple[str, object]]:
    """Every trust section of a run, in report order; `name` maps a variant to its label."""
    return calibration_sections(t, name) + threshold_sections(t, name) + group_sections(t, name)
