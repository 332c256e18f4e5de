"""Report rows from a predictions table: metrics, significance, co-occurrence, complexity.

Pure functions used by the evaluate stage's `finish`. `pred` is a pandas DataFrame with the
columns of the `predictions` report table (eval_dataset, variant, fold, row, subject, ...,
AUxx_prob, AUxx_pred, AUxx_label); `scored` maps each eval dataset to the AU columns that are
scored on it (the models' AUs it labels: all of them within a dataset, the shared ones across).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.config import EvalConfig, Variant
from pipeline.evaluation.metrics import AVG, au_scores, cooccurrence_faithfulness, mean_over_folds
from pipeline.evaluation.stats import PairedUnit, bootstrap_f1_diff, frame_test, subject_test

BASELINE = Variant.AU_FAN  # every other variant is tested against it (paper's Table XII)
ALL_POSITIVE = "all_positive"  # the trivial baseline in the metrics table: every AU present
CI_LEVEL = 0.95
DEPENDENCY_MIN_R = 0.1  # |r| an AU pair needs to count as a dependency (dependency F1)
DEPENDENCY_ALPHA = 0.05  # and its Pearson test p-value must be below this
POOLED, MEAN = "pooled", "mean"
# Paper, Section V-F "Complexity discussion": (params in millions, "GFLOPs" per 256x256 frame).
PAPER_COMPLEXITY = {"au_fan": (1.86, 3.02), "aunet": (2.66, 3.84), "fan_backbone": (12.11, 13.97)}
FEATURE_SHAPE = (768, 64, 64)  # one frame's cached feature (C, H, W)


def arrays(df: pd.DataFrame, aus: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, binary predictions, labels, face) as float arrays (N, n_AU) / (N,)."""
    def mat(kind: str) -> np.ndarray:
        return df[[f"{a}_{kind}" for a in aus]].astype("Float64").to_numpy(np.float64, na_value=np.nan)

    return mat("prob"), mat("pred"), mat("label"), df["face_found"].to_numpy(bool)


def with_baselines(pred: pd.DataFrame) -> pd.DataFrame:
    """`pred` plus the trivial baselines as variants of their own, scored on the same frames:
    `all_positive` predicts every AU present on every frame with a face (its F1 per AU is
    2p / (1 + p), p the AU's positive rate on those frames). Readers of AU papers rarely see
    it; an F1 that does not beat it has learned nothing."""
    base = []
    for ev, g in pred.groupby("eval_dataset", sort=True):
        first = g[g.variant == g.variant.iloc[0]].copy()  # every variant scores the same frames
        for c in [c for c in first.columns if c.endswith(("_prob", "_pred"))]:
            first[c] = np.where(first["face_found"], 1.0, np.nan)
        base.append(first.assign(variant=ALL_POSITIVE, head_name=""))
    return pd.concat([pred, *base], ignore_index=True) if base else pred


def metric_rows(pred: pd.DataFrame, scored: dict[str, list[str]], threshold: float) -> pd.DataFrame:
    """Per-AU and Avg scores for each (eval dataset, variant), the baselines included: per fold,
    pooled, mean of folds; `positive_rate` = n_pos / n of the scored frames."""
    out = []
    for (ev, variant), g in with_baselines(pred).groupby(["eval_dataset", "variant"], sort=True):
        aus = scored[ev]
        per_fold = []
        for fold, gf in g.groupby("fold", sort=True):
            p, _, y, face = arrays(gf, aus)
            per_fold.append(au_scores(p, y, face, aus, threshold).assign(fold=str(fold)))
        p, _, y, face = arrays(g, aus)
        pooled = au_scores(p, y, face, aus, threshold).assign(fold=POOLED)
        mean = mean_over_folds(pd.concat(per_fold)).assign(fold=MEAN)
        for part in (*per_fold, pooled, mean):
            out.append(part.assign(eval_dataset=ev, variant=variant, threshold=threshold))
    if not out:
        return pd.DataFrame()
    rows = pd.concat(out, ignore_index=True)
    rate = np.divide(rows.n_pos, rows.n, out=np.full(len(rows), np.nan), where=rows.n > 0)
    is_avg = (rows.au == AVG).to_numpy()
    rows["positive_rate"] = rate
    keys = ["eval_dataset", "variant", "fold"]  # the Avg row's rate: the mean over its AUs
    per_au = rows[~is_avg].groupby(keys).positive_rate.mean()
    rows.loc[is_avg, "positive_rate"] = per_au.reindex(pd.MultiIndex.from_frame(rows.loc[is_avg, keys])).to_numpy()
    return rows


def _paired(pred: pd.DataFrame, ev: str, variant: str, aus: list[str]):
    """Baseline and variant predictions on the same frames (inner join on fold and row)."""
    keys = ["fold", "row"]
    a = pred[(pred.eval_dataset == ev) & (pred.variant == BASELINE.value)].set_index(keys)
    b = pred[(pred.eval_dataset == ev) & (pred.variant == variant)].set_index(keys)
    common = a.index.intersection(b.index).sort_values()
    a, b = a.loc[common].reset_index(), b.loc[common].reset_index()
    _, pa_, y, _ = arrays(a, aus)
    _, pb_, _, _ = arrays(b, aus)
    return pa_, pb_, y, a["subject"].astype(str).to_numpy()


def significance_rows(pred: pd.DataFrame, scored: dict[str, list[str]], ev_cfg: EvalConfig) -> pd.DataFrame:
    """AU-FAN against each other variant: frame-level and subject-level t-tests, bootstrap CI."""
    rows = []
    for ev in sorted(pred["eval_dataset"].unique()):
        variants = set(pred.loc[pred.eval_dataset == ev, "variant"])
        if BASELINE.value not in variants:
            continue
        for variant in [v.value for v in Variant if v is not BASELINE and v.value in variants]:
            pa_, pb_, y, subjects = _paired(pred, ev, variant, scored[ev])
            base = {"eval_dataset": ev, "baseline": BASELINE.value, "variant": variant,
                    "level": np.nan, "n_boot": 0, "seed": ev_cfg.seed, "ci_lo": np.nan, "ci_hi": np.nan}
            for unit in (PairedUnit.FRAME_ACCURACY, PairedUnit.FRAME_F1):
                rows.append(base | {"unit": unit.value, "test": "paired_t"} | frame_test(pa_, pb_, y, unit))
            rows.append(base | {"unit": PairedUnit.SUBJECT_F1.value, "test": "paired_t"}
                        | subject_test(pa_, pb_, y, subjects))
            bs = bootstrap_f1_diff(pa_, pb_, y, subjects, ev_cfg.bootstrap, ev_cfg.seed, CI_LEVEL)
            rows.append(base | {"unit": "avg_f1", "test": "bootstrap_subjects", "n": bs["n"],
                                "t": np.nan, "p": np.nan, "mean_a": np.nan, "mean_b": np.nan,
                                "diff": bs["diff"], "ci_lo": bs["lo"], "ci_hi": bs["hi"],
                                "level": CI_LEVEL, "n_boot": bs["n_boot"]})
    return pd.DataFrame(rows)


def cooccurrence_rows(pred: pd.DataFrame, scored: dict[str, list[str]]) -> pd.DataFrame:
    """Paper's Table X per (eval dataset, variant, fold) and pooled over folds."""
    rows = []
    for (ev, variant), g in pred.groupby(["eval_dataset", "variant"], sort=True):
        aus = scored[ev]
        parts = [(str(k), gf) for k, gf in g.groupby("fold", sort=True)] + [(POOLED, g)]
        for fold, gf in parts:
            _, bp, y, face = arrays(gf, aus)
            r = cooccurrence_faithfulness(bp, y, face, DEPENDENCY_MIN_R, DEPENDENCY_ALPHA)
            rows.append({"eval_dataset": ev, "variant": variant, "fold": fold,
                         **{k: r[k] for k in ("l2", "l2_rms", "dependency_f1", "edges_pred",
                                              "edges_label", "edges_matched", "n")},
                         "min_r": DEPENDENCY_MIN_R, "alpha": DEPENDENCY_ALPHA, "au_columns": aus,
                         "r_pred": r["r_pred"].ravel().tolist(),
                         "r_label": r["r_label"].ravel().tolist()})
    return pd.DataFrame(rows)


def _count(model: torch.nn.Module, *inputs: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*inputs)
    return float(counter.get_total_flops())


def complexity_rows(variants: list[str], n_aus: int) -> pd.DataFrame:
    """Trainable parameters and FLOPs per sample, counted on the meta device (no arithmetic).

    torch's FlopCounterMode counts 2 FLOPs per multiply-add; `gmacs` = gflops / 2, which is the
    quantity the paper's "GFLOPs" figures match (AU-FAN 3.01 GMACs measured vs 3.02 printed).
    """
    from pipeline.models.fan import INPUT_SIZE, FrozenFAN
    from pipeline.models.heads import build_head, n_trainable

    rows = []
    for v in variants:
        with torch.device("meta"):
            model = build_head(Variant(v), n_aus).eval()
            x = torch.empty(1, *FEATURE_SHAPE)
        flops = _count(model, x, x, x) if Variant(v).temporal else _count(model, x)
        paper = PAPER_COMPLEXITY.get(v, (np.nan, np.nan))
        rows.append({"variant": v, "n_aus": n_aus, "trainable_params": n_trainable(model),
                     "gflops": flops / 1e9, "gmacs": flops / 2e9,
                     "input_shape": "x".join(map(str, FEATURE_SHAPE)),
                     "paper_params_m": paper[0], "paper_gflops": paper[1],
                     "note": "head on cached features; temporal heads read 3 frames"})
    with torch.device("meta"):
        fan = FrozenFAN().eval()
        x = torch.empty(1, 3, INPUT_SIZE, INPUT_SIZE)
    flops = _count(fan, x)
    paper = PAPER_COMPLEXITY["fan_backbone"]
    rows.append({"variant": "fan_backbone", "n_aus": n_aus,
                 "trainable_params": sum(p.numel() for p in fan.parameters()),
                 "gflops": flops / 1e9, "gmacs": flops / 2e9,
                 "input_shape": f"3x{INPUT_SIZE}x{INPUT_SIZE}", "paper_params_m": paper[0],
                 "paper_gflops": paper[1], "note": "frozen 2-stack FAN (parameters, not trained)"})
    return pd.DataFrame(rows)
