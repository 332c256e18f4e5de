"""Validation-chosen thresholds of one head (eval.threshold_choice: validation), shared by the
evaluate stage and `aunet export`; pure functions of the manifest, features and head given.

The head of fold k was trained without its validation subjects (`pipeline.folds.
validation_rows`: a seeded, subject-exclusive part of fold k's training data); here it predicts
their frames and `pipeline.evaluation.thresholds.choose_thresholds` picks each AU's threshold.
Only rows outside test fold k are ever read.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import EvalConfig, ThresholdChoice, Variant
from pipeline.evaluation.thresholds import ThresholdSource, choose_thresholds
from pipeline.folds import validation_rows
from pipeline.learning.inference import predict
from pipeline.learning.temporal import triplet_rows


def fixed(aus: list[str], ev: EvalConfig) -> dict:
    """The record of fixed thresholds (eval.threshold for every AU)."""
    return {"choice": ThresholdChoice.FIXED.value, "aus": list(aus),
            "thresholds": [ev.threshold] * len(aus), "source": [ThresholdSource.FIXED.value] * len(aus),
            "f1_validation": [None] * len(aus), "n_pos": [0] * len(aus),
            "subjects": [], "n_frames": 0}


def validation_thresholds(table, store, model, meta: dict, fold: int, ev: EvalConfig,
                          batch_size: int) -> dict:
    """Each of the head's AUs' threshold from its validation subjects' frames (with a face and a
    label): {choice, aus, thresholds, source, f1_validation, n_pos, subjects, n_frames}."""
    df: pd.DataFrame = table.select(["row", "subject", "video_id", "frame", "fold"]).to_pandas()
    val, held = validation_rows(df["subject"].to_numpy(), df["fold"].to_numpy(), fold,
                                ev.validation_fraction, ev.validation_seed)
    aus = list(meta["au_columns"])
    au_set_y = (table.select(aus).to_pandas().astype("Float32")
                .to_numpy(np.float32, na_value=np.nan))  # (N, n_AU) in the head's AU order
    rows = np.flatnonzero(val & store.valid & ~np.isnan(au_set_y).all(1))  # (n,)
    triplets = None
    if Variant(meta["variant"]).temporal:
        triplets = triplet_rows(df, store.valid, int(meta["temporal_offset"]))[0][rows]  # (n, 3)
    p = predict(model, store, rows, triplets, batch_size) if len(rows) else np.zeros((0, len(aus)))
    y = au_set_y[rows]  # (n, n_AU)
    thr, f1, source = choose_thresholds(p, y, ev.threshold)
    return {"choice": ThresholdChoice.VALIDATION.value, "aus": aus, "thresholds": thr.tolist(),
            "source": [s.value for s in source], "f1_validation": f1.tolist(),
            "n_pos": (y == 1).sum(0).astype(int).tolist(), "subjects": held, "n_frames": int(len(rows))}


def given(units: list[tuple[str, int, str]]) -> dict[tuple[str, int], dict]:
    """(variant, fold) -> the validation thresholds recorded in the provenance of the
    evaluate units' predictions files (variant, fold, path); own-dataset units carry them."""
    from store import location
    from store.provenance import read_provenance

    out = {}
    for variant, fold, path in units:
        rec = (read_provenance(location.as_path(path)) or {}).get("thresholds")
        if rec:
            out[(variant, int(fold))] = rec
    return out


def threshold_rows(pred: pd.DataFrame, scored: dict[str, list[str]],
                   chosen: dict[tuple[str, int], dict], ev: EvalConfig) -> pd.DataFrame:
    """Rows of the `thresholds` table: per (eval dataset, variant, test fold, AU) the threshold
    the fold's head was given (`chosen[(variant, fold)]`, from its validation subjects) and the
    test F1 at it beside the test F1 at eval.threshold; `fold = 'mean'`: means over folds."""
    from pipeline.evaluation.metrics import AVG, au_scores
    from stages.scoring import MEAN, arrays

    rows = []
    for (ev_name, variant, fold), g in pred.groupby(["eval_dataset", "variant", "fold"], sort=True):
        rec = chosen.get((variant, int(fold)))
        if rec is None:
            continue
        aus = scored[ev_name]
        given = dict(zip(rec["aus"], rec["thresholds"]))
        src = dict(zip(rec["aus"], rec["source"]))
        f1_val = dict(zip(rec["aus"], rec["f1_validation"]))
        n_pos = dict(zip(rec["aus"], rec["n_pos"]))
        thr = np.array([given.get(a, ev.threshold) for a in aus])  # (n_AU,)
        p, _, y, face = arrays(g, aus)
        at_fixed = au_scores(p, y, face, aus, ev.threshold).set_index("au").f1
        at_chosen = au_scores(p, y, face, aus, thr).set_index("au").f1
        key = {"eval_dataset": ev_name, "variant": variant, "fold": str(fold), "choice": rec["choice"],
               "fixed_threshold": ev.threshold, "n_val_subjects": len(rec["subjects"]),
               "val_subjects": list(rec["subjects"]), "n_val_frames": rec["n_frames"]}
        for a, t in zip(aus, thr):
            rows.append(key | {"au": a, "threshold": float(t), "source": src.get(a, ThresholdSource.FIXED.value),
                               "n_val_pos": int(n_pos.get(a, 0)), "f1_validation": float(f1_val.get(a, np.nan)),
                               "f1_fixed": float(at_fixed[a]), "f1_chosen": float(at_chosen[a])})
        rows.append(key | {"au": AVG, "threshold": np.nan, "source": "", "n_val_pos": 0,
                           "f1_validation": float(np.nanmean([f1_val.get(a, np.nan) for a in aus])),
                           "f1_fixed": float(at_fixed[AVG]), "f1_chosen": float(at_chosen[AVG])})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    means = (out.groupby(["eval_dataset", "variant", "au"], sort=False)
             .agg(threshold=("threshold", "mean"), f1_validation=("f1_validation", "mean"),
                  f1_fixed=("f1_fixed", "mean"), f1_chosen=("f1_chosen", "mean"),
                  n_val_pos=("n_val_pos", "sum"), n_val_frames=("n_val_frames", "sum"),
                  n_val_subjects=("n_val_subjects", "sum"), choice=("choice", "first"),
                  fixed_threshold=("fixed_threshold", "first"))
             .reset_index().assign(fold=MEAN, source=""))
    means["val_subjects"] = [[] for _ in range(len(means))]
    return pd.concat([out, means[out.columns]], ignore_index=True)
