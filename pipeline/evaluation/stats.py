"""Paired significance tests between two models scored on the same test frames (Table XII).

`a` is the baseline (AU-FAN), `b` the other variant. Inputs: binary predictions `pred_a`,
`pred_b` (N, n_AU) with NaN where no face was found, labels `y` (N, n_AU) with NaN for unknown,
`subjects` (N,) the subject of each frame. Rows must be the same frames in the same order.

Sign conventions (as in the paper's Table XII, where t < 0 means the variant is better):
`t, p = scipy.stats.ttest_rel(score_a, score_b)`; `diff = mean(score_b) - mean(score_a)`.
"""
from __future__ import annotations

from enum import Enum

import numpy as np
from scipy import stats

from pipeline.evaluation.metrics import counts, scores_from_counts


class PairedUnit(str, Enum):
    """What one paired observation is (the `unit` column of the significance table)."""

    FRAME_ACCURACY = "frame_accuracy"  # per frame: fraction of its known AUs predicted right
    FRAME_F1 = "frame_f1"  # per frame: example-based F1 2|Y&P|/(|Y|+|P|) (1 when both empty)
    SUBJECT_F1 = "subject_f1"  # per subject: F1 over its frames, averaged over its present AUs


def _check(pred_a: np.ndarray, pred_b: np.ndarray, y: np.ndarray) -> None:
    if pred_a.shape != pred_b.shape or pred_a.shape != y.shape:
        raise ValueError(f"paired test needs the same frames: shapes {pred_a.shape}, "
                         f"{pred_b.shape}, labels {y.shape}")


def paired_frames(pred_a, pred_b, y) -> np.ndarray:
    """Frames both models scored (a face in both) with at least one known label. (N,) bool."""
    return ~np.isnan(pred_a).any(1) & ~np.isnan(pred_b).any(1) & ~np.isnan(y).all(1)


def frame_scores(pred: np.ndarray, y: np.ndarray, unit: PairedUnit) -> np.ndarray:
    """One score per frame over its known AUs (NaN where it has none). (N,)"""
    known = ~np.isnan(y) & ~np.isnan(pred)
    n_known = known.sum(1)
    if unit is PairedUnit.FRAME_ACCURACY:
        right = ((pred == y) & known).sum(1)
        return np.divide(right, n_known, out=np.full(len(y), np.nan), where=n_known > 0)
    if unit is PairedUnit.FRAME_F1:
        tp = ((pred == 1) & (y == 1) & known).sum(1)
        size = ((pred == 1) & known).sum(1) + ((y == 1) & known).sum(1)
        out = np.divide(2 * tp, size, out=np.ones(len(y)), where=size > 0)
        out[n_known == 0] = np.nan
        return out
    raise ValueError(f"{unit} is not a per-frame unit")


def _ttest(a: np.ndarray, b: np.ndarray) -> dict:
    n = len(a)
    if n < 2:
        return {"t": float("nan"), "p": float("nan"), "n": n, "mean_a": float("nan"),
                "mean_b": float("nan"), "diff": float("nan")}
    res = stats.ttest_rel(a, b)
    return {"t": float(res.statistic), "p": float(res.pvalue), "n": n, "mean_a": float(a.mean()),
            "mean_b": float(b.mean()), "diff": float(b.mean() - a.mean())}


def frame_test(pred_a, pred_b, y, unit: PairedUnit = PairedUnit.FRAME_ACCURACY) -> dict:
    """Paired t-test over frames: t, p, n (frames), mean_a, mean_b, diff (b - a)."""
    pred_a, pred_b, y = (np.asarray(v, np.float64) for v in (pred_a, pred_b, y))
    _check(pred_a, pred_b, y)
    keep = paired_frames(pred_a, pred_b, y)
    return _ttest(frame_scores(pred_a[keep], y[keep], unit), frame_scores(pred_b[keep], y[keep], unit))


def subject_counts(pred, y, subjects) -> tuple[np.ndarray, np.ndarray]:
    """Confusion counts per subject: (subject names sorted (S,), counts (S, 4, n_AU) tp fp fn tn)."""
    subjects = np.asarray(subjects).astype(str)
    names = np.unique(subjects)
    out = np.zeros((len(names), 4, y.shape[1]), dtype=np.int64)
    for k, s in enumerate(names):
        m = subjects == s
        c = counts(pred[m], y[m])
        out[k] = np.stack([c.tp, c.fp, c.fn, c.tn])
    return names, out


def _avg_f1(c: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Mean over present AUs of F1 from counts (..., 4, n_AU); NaN where no AU is present."""
    f1 = scores_from_counts(c[..., 0, :], c[..., 1, :], c[..., 2, :], c[..., 3, :])["f1"]
    n = present.sum(-1)
    return np.divide((f1 * present).sum(-1), n, out=np.full(n.shape, np.nan), where=n > 0)


def subject_f1(pred, y, subjects) -> tuple[np.ndarray, np.ndarray]:
    """Per-subject F1 averaged over the AUs the subject shows (>= 1 labelled positive).

    An AU the subject never shows has F1 = 0 whatever a model predicts (tp = 0), so it is left
    out of that subject's average instead of diluting it. Returns (names (S,), f1 (S,)).
    """
    names, c = subject_counts(np.asarray(pred, np.float64), np.asarray(y, np.float64), subjects)
    present = (c[:, 0] + c[:, 2]) > 0  # tp + fn: labelled positives
    return names, _avg_f1(c, present)


def _paired_subject_frames(pred_a, pred_b, y, subjects):
    """The frames both models scored, as float arrays, with their subjects as strings."""
    pred_a, pred_b, y = (np.asarray(v, np.float64) for v in (pred_a, pred_b, y))
    _check(pred_a, pred_b, y)
    keep = paired_frames(pred_a, pred_b, y)
    return pred_a[keep], pred_b[keep], y[keep], np.asarray(subjects).astype(str)[keep]


def subject_test(pred_a, pred_b, y, subjects) -> dict:
    """Paired t-test over subjects on per-subject F1 (frames of one subject are not independent)."""
    pred_a, pred_b, y, subjects = _paired_subject_frames(pred_a, pred_b, y, subjects)
    _, fa = subject_f1(pred_a, y, subjects)
    _, fb = subject_f1(pred_b, y, subjects)
    ok = ~np.isnan(fa) & ~np.isnan(fb)
    return _ttest(fa[ok], fb[ok])


def bootstrap_f1_diff(pred_a, pred_b, y, subjects, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> dict:
    """Bootstrap over subjects of the difference in average-over-AUs F1 (b - a).

    Each replicate draws the test subjects with replacement (numpy default_rng(seed)), pools
    their frames' confusion counts and computes each model's F1 per AU, averaged over AUs with a
    labelled positive in the replicate. Returns diff (on all subjects), lo, hi (percentile
    interval at `level`), n (subjects), n_boot.
    """
    pred_a, pred_b, y, subjects = _paired_subject_frames(pred_a, pred_b, y, subjects)
    names, ca = subject_counts(pred_a, y, subjects)
    _, cb = subject_counts(pred_b, y, subjects)
    s = len(names)
    if s == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0, "n_boot": n_boot}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, s, size=(n_boot, s))  # (B, S) subject indices
    weights = np.zeros((n_boot, s))
    np.add.at(weights, (np.arange(n_boot)[:, None], draws), 1.0)  # (B, S) multiplicities

    def f1_of(c: np.ndarray, w: np.ndarray) -> np.ndarray:
        pooled = np.einsum("bs,ska->bka", w, c)  # (B, 4, n_AU)
        return _avg_f1(pooled, (pooled[:, 0] + pooled[:, 2]) > 0)

    full = np.ones((1, s))
    diff = float(f1_of(cb, full)[0] - f1_of(ca, full)[0])
    boot = f1_of(cb, weights) - f1_of(ca, weights)  # (B,)
    boot = boot[~np.isnan(boot)]
    tail = (1 - level) / 2 * 100
    lo, hi = (np.percentile(boot, [tail, 100 - tail]) if len(boot) else (np.nan, np.nan))
    return {"diff": diff, "lo": float(lo), "hi": float(hi), "n": s, "n_boot": n_boot}
