"""Calibration rows of the `calibration` report table (pure; used by the evaluate stage).

Per (eval dataset, variant, fold) and pooled over the folds' test frames: expected calibration
error, Brier score and the reliability bins, for each scored AU and for all of them together
(`au = 'all'`: every (frame, AU) pair of the scored AUs). Only models have probabilities: the
all-present baseline has no row.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.evaluation.calibration import N_BINS, brier, ece, reliability_bins
from stages.scoring import POOLED, arrays

ALL_AUS = "all"  # the `au` value of the row pooled over AUs


def _row(p: np.ndarray, y: np.ndarray) -> dict:
    """One table row's measures from probabilities and labels of any shape (NaN: not scored)."""
    bins = reliability_bins(p, y, N_BINS)
    keep = ~(np.isnan(p) | np.isnan(y))
    return {"ece": ece(p, y, N_BINS), "brier": brier(p, y), "n": int(keep.sum()),
            "n_pos": int((y[keep] == 1).sum()),
            "mean_prob": float(p[keep].mean()) if keep.any() else np.nan,
            "n_bins": N_BINS, "bin_count": bins["count"].tolist(),
            "bin_mean_prob": bins["mean_prob"].tolist(), "bin_frac_pos": bins["frac_pos"].tolist()}


def calibration_rows(pred: pd.DataFrame, scored: dict[str, list[str]]) -> pd.DataFrame:
    """Rows per (eval dataset, variant, fold or 'pooled', AU or 'all') of the models' test
    predictions in `pred` (the predictions table's columns)."""
    rows = []
    for (ev, variant), g in pred.groupby(["eval_dataset", "variant"], sort=True):
        aus = scored[ev]
        parts = [(str(k), gf) for k, gf in g.groupby("fold", sort=True)] + [(POOLED, g)]
        for fold, gf in parts:
            p, _, y, face = arrays(gf, aus)  # (N, n_AU) x 2, (N,)
            p[~face] = np.nan
            key = {"eval_dataset": ev, "variant": variant, "fold": fold}
            rows += [key | {"au": au} | _row(p[:, j], y[:, j]) for j, au in enumerate(aus)]
            rows.append(key | {"au": ALL_AUS} | _row(p, y))
    return pd.DataFrame(rows)
