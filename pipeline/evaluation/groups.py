"""F1 per group of subjects (sex, age band, ...): subject-level bootstrap intervals and a
permutation test between groups.

Input everywhere: per-subject confusion counts `c` (S, 4, n_AU) (tp, fp, fn, tn; from
`pipeline.evaluation.stats.subject_counts`). A group's F1 per AU comes from its subjects'
counts pooled; its Avg is the mean over the AUs with a labelled positive among them (as the
subject bootstrap of `stats.bootstrap_f1_diff`).
"""
from __future__ import annotations

import numpy as np

from pipeline.evaluation.metrics import scores_from_counts

MIN_GROUP_SUBJECTS = 3  # smaller groups are reported as too small, never tested


def pooled_f1(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-AU F1 (..., n_AU), Avg over present AUs (...,)) of counts (..., 4, n_AU)."""
    f1 = scores_from_counts(c[..., 0, :], c[..., 1, :], c[..., 2, :], c[..., 3, :])["f1"]
    present = (c[..., 0, :] + c[..., 2, :]) > 0
    n = present.sum(-1)
    avg = np.divide((f1 * present).sum(-1), n, out=np.full(n.shape, np.nan), where=n > 0)
    return f1, avg


def _weights(n_boot: int, s: int, rng: np.random.Generator) -> np.ndarray:
    """(B, S) multiplicities of the subjects in each replicate (drawn with replacement)."""
    draws = rng.integers(0, s, size=(n_boot, s))
    w = np.zeros((n_boot, s))
    np.add.at(w, (np.arange(n_boot)[:, None], draws), 1.0)
    return w


def bootstrap_group(c: np.ndarray, n_boot: int, seed: int, level: float) -> dict[str, np.ndarray]:
    """Percentile intervals over subject resamples (numpy default_rng(seed)).

    Returns f1 (n_AU,), avg (), and lo/hi of each: f1_lo, f1_hi (n_AU,), avg_lo, avg_hi."""
    f1, avg = pooled_f1(c.sum(0))
    nan = {"f1_lo": np.full(c.shape[-1], np.nan), "f1_hi": np.full(c.shape[-1], np.nan),
           "avg_lo": np.nan, "avg_hi": np.nan}
    if n_boot == 0 or len(c) == 0:
        return {"f1": f1, "avg": avg} | nan
    pooled = np.einsum("bs,ska->bka", _weights(n_boot, len(c), np.random.default_rng(seed)), c)
    bf1, bavg = pooled_f1(pooled)  # (B, n_AU), (B,)
    tail = (1 - level) / 2 * 100
    lo, hi = np.nanpercentile(bf1, [tail, 100 - tail], axis=0)
    bavg = bavg[~np.isnan(bavg)]
    alo, ahi = np.percentile(bavg, [tail, 100 - tail]) if len(bavg) else (np.nan, np.nan)
    return {"f1": f1, "avg": avg, "f1_lo": lo, "f1_hi": hi, "avg_lo": float(alo), "avg_hi": float(ahi)}


def spread(c: np.ndarray, labels: np.ndarray, groups: list) -> float:
    """The test statistic: largest minus smallest group Avg F1 (subjects' counts pooled)."""
    avgs = [pooled_f1(c[labels == g].sum(0))[1] for g in groups]
    return float(np.nanmax(avgs) - np.nanmin(avgs))


def permutation_test(c: np.ndarray, labels: np.ndarray, n_perm: int, seed: int) -> tuple[float, float]:
    """(observed spread, p) of 'Avg F1 does not depend on the group': the subjects' group labels
    are shuffled n_perm times (default_rng(seed)); p = (1 + #{spread >= observed}) / (1 + n_perm).
    Give only subjects of groups with >= MIN_GROUP_SUBJECTS; NaN with fewer than two groups."""
    labels = np.asarray(labels).astype(str)
    groups = sorted(set(labels))
    if len(groups) < 2 or n_perm == 0:
        return float("nan"), float("nan")
    observed = spread(c, labels, groups)
    rng = np.random.default_rng(seed)
    hits = sum(spread(c, rng.permutation(labels), groups) >= observed - 1e-12 for _ in range(n_perm))
    return observed, (1 + hits) / (1 + n_perm)
