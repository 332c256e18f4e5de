"""The mixed-vs-single comparison pairs the same frames: BP4D's frame numbers restart in every
task, so two videos of one subject share frame numbers (stages/mixed_eval.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.aus import AUSet
from pipeline.config import DatasetConfig, EvalConfig, Layout, RunConfig
from stages import mixed_eval

AUS = ["AU01", "AU02"]


def _single_predictions(seed: int = 3) -> pd.DataFrame:
    """3 subjects x 2 tasks (T1, T2) x frames 1..6, fold 1; random labels and predictions."""
    rng = np.random.default_rng(seed)
    rows = [{"subject": s, "video_id": f"{s}_{t}", "frame": f} for s in ("F001", "F002", "M001")
            for t in ("T1", "T2") for f in range(1, 7)]
    df = pd.DataFrame(rows).assign(eval_dataset="bp4d", variant="au_fan", fold=1, face_found=True)
    for a in AUS:
        df[f"{a}_label"] = rng.integers(0, 2, len(df))
        df[f"{a}_pred"] = rng.integers(0, 2, len(df))
        df[f"{a}_prob"] = df[f"{a}_pred"] * 0.8 + 0.1
    return df


def test_mixed_and_single_models_are_paired_frame_by_frame_within_their_video(monkeypatch):
    single = _single_predictions()
    # the mixed model predicts exactly what the single model does, on the same frames, but its
    # rows come in another order (T2 before T1) with the mix's member prefixes
    mixed = single.sample(frac=1.0, random_state=1).copy()
    mixed["subject"] = "bp4d/" + mixed["subject"]
    mixed["video_id"] = "bp4d/" + mixed["video_id"]
    member = RunConfig(dataset=DatasetConfig(name="bp4d", layout=Layout.BP4D, root=Path("/x"),
                                             au_set=AUSet.BP4D))
    monkeypatch.setattr(mixed_eval.mix, "members", lambda cfg: [member])
    monkeypatch.setattr(mixed_eval, "_single_predictions", lambda m: ("run-1", single))
    comp, sig = mixed_eval.comparison(mixed, None, EvalConfig(bootstrap=20))
    assert len(comp) and np.allclose(comp["diff"], 0.0)
    paired = sig.set_index("unit")
    # same predictions on the same frames: every paired difference is exactly zero
    assert paired.loc["subject_f1", "n"] == 3
    assert paired.loc["subject_f1", "mean_a"] == paired.loc["subject_f1", "mean_b"]
    assert paired.loc["avg_f1", "diff"] == 0.0
    assert paired.loc["avg_f1", "ci_lo"] == 0.0 == paired.loc["avg_f1", "ci_hi"]


def test_paired_rows_keep_videos_apart():
    single = _single_predictions()
    a, b = mixed_eval.paired_rows(single, single.iloc[::-1])
    assert len(a) == len(single) == 36  # no frame of T1 matched with T2's frame of that number
    assert (a["video_id"] == b["video_id"]).all() and (a["frame"] == b["frame"]).all()
