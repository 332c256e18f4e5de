"""Calibration of AU probabilities: reliability bins, expected calibration error, Brier score.

Inputs: probabilities `p` (N,) in [0, 1] and labels `y` (N,) in {0, 1}, NaN in either where the
pair is not scored (no face, unknown label): such pairs are left out. Per AU, pass one column;
pooled over AUs, pass every (frame, AU) pair flattened.

Bins are `N_BINS` equal-width intervals [i/B, (i+1)/B), the last one closed at 1.
ECE = sum over bins of (n_b / n) * |mean label in b - mean probability in b| (Naeini et al.,
2015; the usual "confidence vs frequency of the positive class" form for a binary output).
Brier = mean of (p - y)^2 over the scored pairs.
"""
from __future__ import annotations

import numpy as np

N_BINS = 10  # equal-width probability bins of the reliability diagram and of ECE


def _scored(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(p, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if p.shape != y.shape:
        raise ValueError(f"calibration needs one label per probability: {p.shape} vs {y.shape}")
    keep = ~(np.isnan(p) | np.isnan(y))
    return p[keep], y[keep]


def reliability_bins(p: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Per bin (n_bins,): count, mean probability, fraction of positive labels (NaN if empty)."""
    p, y = _scored(p, y)
    b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)  # (n,) bin of each pair
    count = np.bincount(b, minlength=n_bins).astype(np.int64)
    psum = np.bincount(b, weights=p, minlength=n_bins)
    ysum = np.bincount(b, weights=y, minlength=n_bins)
    nan = np.full(n_bins, np.nan)
    return {"count": count,
            "mean_prob": np.divide(psum, count, out=nan.copy(), where=count > 0),
            "frac_pos": np.divide(ysum, count, out=nan.copy(), where=count > 0)}


def ece(p: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error over equal-width bins; NaN when nothing is scored."""
    r = reliability_bins(p, y, n_bins)
    n = r["count"].sum()
    if n == 0:
        return float("nan")
    full = r["count"] > 0
    gap = np.abs(r["frac_pos"][full] - r["mean_prob"][full])
    return float((r["count"][full] * gap).sum() / n)


def brier(p: np.ndarray, y: np.ndarray) -> float:
    """Mean squared difference between probability and label; NaN when nothing is scored."""
    p, y = _scored(p, y)
    return float(np.mean((p - y) ** 2)) if len(p) else float("nan")
