"""Detection scores per AU and co-occurrence faithfulness (paper's Section V-B, Table X).

Inputs everywhere: probabilities `p` (N, n_AU) in [0, 1], labels `y` (N, n_AU) float with NaN for
unknown, and `face` (N,) bool (False: no face was found, the frame has no prediction). A label
that is unknown is left out of that AU's counts only; a no-face frame is left out of every AU
and counted (`n_no_face`).

Zero-division convention = scikit-learn's `zero_division=0`: precision is 0 with no predicted
positive, recall is 0 with no labelled positive, F1 is 0 when tp + fp + fn = 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.aus import DECISION_THRESHOLD
from pipeline.labels import correlation

AVG = "Avg"  # the "au" value of the average-over-AUs row (the paper's "Avg" column)
SCORE_COLUMNS = ["f1", "precision", "recall", "accuracy"]
COUNT_COLUMNS = ["n", "n_pos", "tp", "fp", "fn", "tn", "n_no_face", "n_unknown"]


def binarize(p: np.ndarray, threshold: float) -> np.ndarray:
    """1.0 where p >= threshold, 0.0 below, NaN where p is NaN (no face). (N, n_AU)"""
    out = (p >= threshold).astype(np.float64)
    out[np.isnan(p)] = np.nan
    return out


@dataclass(frozen=True)
class Counts:
    """Confusion counts per AU over the scored frames. Each field (n_AU,) int64."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    @property
    def n(self) -> np.ndarray:
        return self.tp + self.fp + self.fn + self.tn


def counts(pred: np.ndarray, y: np.ndarray) -> Counts:
    """Confusion counts per AU; frames where pred or label is NaN are left out. (N, n_AU) in."""
    known = ~(np.isnan(pred) | np.isnan(y))
    pos, lab = (pred == 1) & known, (y == 1) & known
    return Counts(tp=(pos & lab).sum(0), fp=(pos & ~lab & known).sum(0),
                  fn=(~pos & lab & known).sum(0), tn=(~pos & ~lab & known).sum(0))


def scores_from_counts(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    """F1, precision, recall, accuracy from counts (any broadcastable arrays), zero_division=0."""
    tp, fp, fn, tn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn, tn))

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b > 0)

    return {"f1": ratio(2 * tp, 2 * tp + fp + fn), "precision": ratio(tp, tp + fp),
            "recall": ratio(tp, tp + fn), "accuracy": ratio(tp + tn, tp + fp + fn + tn)}


def au_scores(p: np.ndarray, y: np.ndarray, face: np.ndarray, au_columns: list[str],
              threshold: float = DECISION_THRESHOLD) -> pd.DataFrame:
    """Per-AU scores plus an `Avg` row (mean over AUs of each score; counts summed).

    Columns: au, f1, precision, recall, accuracy, n (scored frames), n_pos, tp, fp, fn, tn,
    n_no_face (frames without a face, excluded), n_unknown (unknown labels on face frames).
    """
    p, y, face = np.asarray(p, np.float64), np.asarray(y, np.float64), np.asarray(face, bool)
    if p.shape != y.shape or p.ndim != 2 or p.shape[1] != len(au_columns) or len(face) != len(p):
        raise ValueError(f"shape mismatch: probabilities {p.shape}, labels {y.shape}, "
                         f"face {face.shape}, {len(au_columns)} AU columns")
    if np.isnan(p[face]).any():
        bad = int(np.flatnonzero(face & np.isnan(p).any(1))[0])
        raise ValueError(f"frame at position {bad} has a face but NaN probabilities")
    pred = binarize(p, threshold)
    pred[~face] = np.nan  # no-face frames are excluded from every AU
    c = counts(pred, y)
    s = scores_from_counts(c.tp, c.fp, c.fn, c.tn)
    df = pd.DataFrame({"au": list(au_columns), **s, "n": c.n, "n_pos": c.tp + c.fn,
                       "tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn})
    df["n_no_face"] = int((~face).sum())
    df["n_unknown"] = np.isnan(y[face]).sum(0)
    return pd.concat([df, average_row(df)], ignore_index=True)


def average_row(df: pd.DataFrame) -> pd.DataFrame:
    """The `Avg` row: scores averaged over AUs (the paper's Avg), counts summed."""
    per_au = df[df["au"] != AVG]
    row = {"au": AVG, **{k: float(per_au[k].mean()) for k in SCORE_COLUMNS}}
    row |= {k: int(per_au[k].sum()) for k in ("n", "n_pos", "tp", "fp", "fn", "tn", "n_unknown")}
    row["n_no_face"] = int(per_au["n_no_face"].max()) if len(per_au) else 0
    return pd.DataFrame([row])


def mean_over_folds(per_fold: pd.DataFrame) -> pd.DataFrame:
    """Mean of per-fold scores per AU (the paper's protocol); counts summed over folds.

    `per_fold` holds au_scores rows of several folds (a `fold` column is ignored). The Avg row
    is the mean over folds of each fold's Avg, which equals the mean over AUs of the fold means.
    """
    agg = {k: "mean" for k in SCORE_COLUMNS} | {k: "sum" for k in COUNT_COLUMNS}
    order = list(dict.fromkeys(per_fold["au"]))
    out = per_fold.groupby("au", sort=False).agg(agg).reindex(order).reset_index()
    return out[["au", *SCORE_COLUMNS, *COUNT_COLUMNS]]


# -- co-occurrence faithfulness -----------------------------------------------------------------
def masked_predictions(pred: np.ndarray, y: np.ndarray, face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and labels on the same frames: face found, every AU known. (M, n_AU) x 2."""
    keep = np.asarray(face, bool) & ~np.isnan(y).any(1) & ~np.isnan(pred).any(1)
    return pred[keep], y[keep]


def dependency_edges(y: np.ndarray, min_r: float, alpha: float) -> set[tuple[int, int, int]]:
    """Significantly correlated AU pairs: (i, j, sign) with i < j, |r| >= min_r, Pearson p < alpha.

    `y` (M, n_AU) without NaN. A constant AU has r = 0 with every other AU (no edge).
    """
    r = correlation(y)
    m, n = len(y), y.shape[1]
    edges = set()
    if m < 3:
        return edges
    for i in range(n):
        for j in range(i + 1, n):
            rij = float(np.clip(r[i, j], -1, 1))
            if abs(rij) < min_r:
                continue
            if abs(rij) >= 1.0:
                p = 0.0
            else:  # two-sided test of r = 0 with m - 2 degrees of freedom
                t = rij * np.sqrt((m - 2) / (1 - rij ** 2))
                p = float(2 * stats.t.sf(abs(t), m - 2))
            if p < alpha:
                edges.add((i, j, int(np.sign(rij))))
    return edges


def cooccurrence_faithfulness(pred: np.ndarray, y: np.ndarray, face: np.ndarray,
                              min_r: float = 0.1, alpha: float = 0.05) -> dict:
    """Paper's Table X: how faithfully predictions reproduce the labels' AU dependencies.

    l2: Frobenius norm of R_pred - R_label (Pearson correlation matrices of the binary
    predictions and of the labels, `pipeline.labels.correlation`, on the same frames).
    l2_rms: l2 / sqrt(n_AU * (n_AU - 1)), the root-mean-square difference over the off-diagonal
    entries (the diagonal is 1 in both), comparable across AU sets. dependency_f1: F1 of the predicted edge set against the labelled edge set
    (`dependency_edges`, an edge matches only with the same sign).
    """
    pm, ym = masked_predictions(np.asarray(pred, np.float64), np.asarray(y, np.float64), face)
    r_pred, r_lab = correlation(pm), correlation(ym)
    n = r_lab.shape[0]
    l2 = float(np.linalg.norm(r_pred - r_lab))
    e_pred, e_lab = dependency_edges(pm, min_r, alpha), dependency_edges(ym, min_r, alpha)
    hit = len(e_pred & e_lab)
    denom = len(e_pred) + len(e_lab)
    return {"l2": l2, "l2_rms": l2 / np.sqrt(max(n * (n - 1), 1)),
            "dependency_f1": 2 * hit / denom if denom else 1.0,
            "edges_pred": len(e_pred), "edges_label": len(e_lab), "edges_matched": hit,
            "n": int(len(ym)), "r_pred": r_pred, "r_label": r_lab}
