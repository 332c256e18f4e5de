"""Per-AU decision thresholds chosen on validation frames (never on a test fold).

Inputs: probabilities `p` (N, n_AU) of a head on its held-out validation frames (NaN: no face)
and their labels `y` (N, n_AU) (NaN: unknown). Each AU's threshold is the point of
`THRESHOLD_GRID` with the highest F1 on those frames; ties go to the point closest to the fixed
threshold, then to the lower one. An AU with no labelled positive among the validation frames
keeps the fixed threshold (its F1 is 0 at every point).
"""
from __future__ import annotations

from enum import Enum

import numpy as np

from pipeline.evaluation.metrics import scores_from_counts

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)  # (19,) candidate thresholds


class ThresholdSource(str, Enum):
    """Where an AU's threshold came from (the `source` column of the thresholds table)."""

    VALIDATION = "validation"  # best F1 on the held-out validation subjects
    FIXED = "fixed"  # eval.threshold (the paper's 0.5)
    FIXED_NO_POSITIVE = "fixed_no_positive"  # validation mode, but no validation frame shows the AU


def f1_at(p: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """F1 of each AU at each threshold: p, y (N,), thresholds (T,) -> (T,), pairs with NaN left out."""
    keep = ~(np.isnan(p) | np.isnan(y))
    p, y = p[keep], y[keep] == 1
    pos = p[None, :] >= thresholds[:, None]  # (T, n)
    tp = (pos & y).sum(1)
    fp = (pos & ~y).sum(1)
    fn = (~pos & y).sum(1)
    return scores_from_counts(tp, fp, fn, np.zeros_like(tp))["f1"]


def choose_thresholds(p: np.ndarray, y: np.ndarray, fixed: float,
                      grid: np.ndarray = THRESHOLD_GRID) -> tuple[np.ndarray, np.ndarray, list[ThresholdSource]]:
    """(thresholds (n_AU,), validation F1 at them (n_AU,), source of each)."""
    p, y = np.asarray(p, np.float64), np.asarray(y, np.float64)
    if p.shape != y.shape or p.ndim != 2:
        raise ValueError(f"thresholds need (N, n_AU) probabilities and labels: {p.shape}, {y.shape}")
    out, f1, source = np.full(p.shape[1], fixed), np.zeros(p.shape[1]), []
    for j in range(p.shape[1]):
        scored = ~(np.isnan(p[:, j]) | np.isnan(y[:, j]))
        if not (y[scored, j] == 1).any():
            source.append(ThresholdSource.FIXED_NO_POSITIVE)
            continue
        f = f1_at(p[:, j], y[:, j], grid)  # (T,)
        best = np.flatnonzero(f == f.max())
        pick = best[np.lexsort((grid[best], np.abs(grid[best] - fixed)))[0]]
        out[j], f1[j] = grid[pick], f[pick]
        source.append(ThresholdSource.VALIDATION)
    return out, f1, source
