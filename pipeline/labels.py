"""Label statistics from a label matrix (N, n_AU) with NaN for unknown."""
from __future__ import annotations

import numpy as np
from pipeline.errors import InputError


def positive_rates(y: np.ndarray) -> np.ndarray:
    """Per-AU positive rate over the frames where the AU is known. (n_AU,)"""
    known = ~np.isnan(y)
    pos = np.nansum(y, axis=0)
    n = known.sum(axis=0)
    return np.divide(pos, n, out=np.full(y.shape[1], np.nan), where=n > 0)


def class_weights(y: np.ndarray, normalise_to: str = "one") -> np.ndarray:
    """Paper's Eq. 1: w_i = (1/r_i) / sum_k (1/r_k).

    `normalise_to="n_aus"` rescales to sum to the number of AUs, as the reference code does
    (same ratios). An AU never positive in the training data gets the largest finite weight.
    """
    r = positive_rates(y)
    if np.all(~np.isfinite(r) | (r <= 0)):
        raise InputError("no AU has a positive frame in the training labels: class weights "
                         "are undefined; check the labels (or the fold) of this dataset")
    floor = np.nanmin(r[r > 0])
    r = np.where(np.isfinite(r) & (r > 0), r, floor)
    inv = 1.0 / r
    w = inv / inv.sum()
    return (w * len(w) if normalise_to == "n_aus" else w).astype(np.float32)


def cooccurrence(y: np.ndarray) -> np.ndarray:
    """P(AU_j = 1 | AU_i = 1), over frames where both are known. (n_AU, n_AU)"""
    n = y.shape[1]
    out = np.full((n, n), np.nan)
    for i in range(n):
        on_i = y[:, i] == 1
        for j in range(n):
            both = on_i & ~np.isnan(y[:, j])
            if both.any():
                out[i, j] = float(np.mean(y[both, j] == 1))
    return out


def correlation(y: np.ndarray) -> np.ndarray:
    """Pearson correlation between AUs over fully-known frames (constant AUs give 0). (n, n)"""
    full = y[~np.isnan(y).any(axis=1)].astype(np.float64)
    n = y.shape[1]
    if len(full) < 2:
        return np.zeros((n, n))
    c = full - full.mean(0)
    sd = np.sqrt((c ** 2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (c.T @ c) / np.outer(sd, sd)
    r = np.nan_to_num(r)
    np.fill_diagonal(r, 1.0)
    return r
