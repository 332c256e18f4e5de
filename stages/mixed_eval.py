"""Evaluation of a mixed run (store/mix.py): per member on its own AUs, pooled, and against the
single-dataset models of each member.

- Per member: the mixed model's predictions on the mixed manifest's test rows are split by
  member (`eval_dataset` = the member's name) and scored on the AUs that member labels.
- Pooled (`eval_dataset` = the mix's name): every test row of every member; each AU over the
  rows that label it (an AU a member does not label is unknown on its rows: never scored there).
- Against single-dataset models: for each member, variant and fold, the member's own model (its
  config's newest complete evaluation run) and the mixed model on the same frames: F1 per AU
  side by side (`comparison` table), the subject-level paired t-test and the bootstrap CI of the
  Avg F1 difference (`significance` rows with baseline `single:{variant}`, variant
  `mixed:{variant}`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.config import EvalConfig, RunConfig
from pipeline.errors import MissingArtifact
from pipeline.evaluation.metrics import AVG, au_scores, mean_over_folds
from pipeline.evaluation.stats import bootstrap_f1_diff, subject_test
from stages.scoring import CI_LEVEL, arrays, metric_rows
from store import mix, tables
from store.catalog import Catalog
from store.identity import eval_id


def member_of(pred: pd.DataFrame) -> pd.Series:
    """Each mixed prediction row's member: the prefix of its subject (`bp4d/F001`)."""
    return pred["subject"].astype(str).str.split("/", n=1).str[0]


def split_members(pred: pd.DataFrame, cfg: RunConfig) -> pd.DataFrame:
    """The mix's own rows relabelled with their member as `eval_dataset`."""
    own = pred.eval_dataset == cfg.dataset.name
    out = pred.copy()
    out.loc[own, "eval_dataset"] = member_of(pred[own])
    return out


def scored_members(cfg: RunConfig, model_aus: list[str]) -> dict[str, list[str]]:
    """{member: the models' AUs it labels, in the models' order}; the mix pooled: all of them."""
    out = {m.dataset.name: [a for a in model_aus if a in m.dataset.au_set.columns]
           for m in mix.members(cfg)}
    return out | {cfg.dataset.name: list(model_aus)}


def pooled_rows(pred: pd.DataFrame, cfg: RunConfig, threshold: float) -> pd.DataFrame:
    """Metrics over every member's test rows together (each AU where labelled)."""
    own = pred[pred.eval_dataset.isin([m.dataset.name for m in mix.members(cfg)])]
    aus = [c[:-5] for c in pred.columns if c.endswith("_prob")]
    return metric_rows(own.assign(eval_dataset=cfg.dataset.name), {cfg.dataset.name: aus}, threshold)


def _single_predictions(member: RunConfig) -> tuple[str, pd.DataFrame]:
    catalog = Catalog(member.store)
    run = tables.latest_run(catalog, member.dataset.name, eval_id(member))
    if run is None:
        raise MissingArtifact(f"comparing with the single-dataset models needs an evaluation of "
                              f"'{member.dataset.name}' with its own config; run `aunet evaluate` "
                              f"with that config first")
    pred = tables.read_run(catalog, "predictions", member.dataset.name, run).to_pandas()
    return run, pred[pred.eval_dataset == member.dataset.name]


# A frame is named by its video and its number in that video: BP4D's frame numbers restart in
# every task (F001_T1 and F001_T2 both have a frame 1), so (subject, frame) is not a frame.
PAIR_KEY = ["fold", "subject", "video_id", "frame"]


def paired_rows(single: pd.DataFrame, mixed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of the same frames in both, in the same order (`PAIR_KEY`, sorted)."""
    key = lambda d: d.assign(video_id=d["video_id"].astype(str),
                             subject=d["subject"].astype(str)).set_index(PAIR_KEY)
    a, b = key(single), key(mixed)
    common = a.index.intersection(b.index).sort_values()
    return a.loc[common].reset_index(), b.loc[common].reset_index()


def comparison(pred: pd.DataFrame, cfg: RunConfig, ev: EvalConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(comparison rows, significance rows): each member's single-dataset model against the
    mixed model of the same variant, on the same test frames and the member's AUs."""
    comp, sig = [], []
    for m in mix.members(cfg):
        name = m.dataset.name
        run, single = _single_predictions(m)
        mixed = pred[pred.eval_dataset == name].copy()
        for col in ("subject", "video_id"):  # the mix prefixes both with the member's name
            mixed[col] = mixed[col].astype(str).str.split("/", n=1).str[1]
        aus = [a for a in m.dataset.au_set.columns if f"{a}_prob" in mixed and f"{a}_prob" in single]
        for variant in sorted(set(mixed.variant) & set(single.variant)):
            a, b = paired_rows(single[single.variant == variant], mixed[mixed.variant == variant])
            per_fold = {"single": [], "mixed": []}
            for fold in sorted(a.fold.unique()):
                for key, d in (("single", a), ("mixed", b)):
                    p, _, y, face = arrays(d[d.fold == fold], aus)
                    per_fold[key].append(au_scores(p, y, face, aus, ev.threshold).assign(fold=str(fold)))
            for fold_rows in zip(per_fold["single"], per_fold["mixed"]):
                comp += _side_by_side(*fold_rows, name, variant, run)
            means = [mean_over_folds(pd.concat(per_fold[k])).assign(fold="mean") for k in ("single", "mixed")]
            comp += _side_by_side(*means, name, variant, run)
            _, pa_, y, _ = arrays(a, aus)
            _, pb_, _, _ = arrays(b, aus)
            subjects = a["subject"].astype(str).to_numpy()
            base = {"eval_dataset": name, "baseline": f"single:{variant}", "variant": f"mixed:{variant}",
                    "seed": ev.seed}
            sig.append(base | {"unit": "subject_f1", "test": "paired_t", "level": np.nan, "n_boot": 0,
                               "ci_lo": np.nan, "ci_hi": np.nan} | subject_test(pa_, pb_, y, subjects))
            bs = bootstrap_f1_diff(pa_, pb_, y, subjects, ev.bootstrap, ev.seed, CI_LEVEL)
            sig.append(base | {"unit": "avg_f1", "test": "bootstrap_subjects", "n": bs["n"],
                               "t": np.nan, "p": np.nan, "mean_a": np.nan, "mean_b": np.nan,
                               "diff": bs["diff"], "ci_lo": bs["lo"], "ci_hi": bs["hi"],
                               "level": CI_LEVEL, "n_boot": bs["n_boot"]})
    return pd.DataFrame(comp), pd.DataFrame(sig)


def _side_by_side(single: pd.DataFrame, mixed: pd.DataFrame, name: str, variant: str,
                  run: str) -> list[dict]:
    s, m = single.set_index("au"), mixed.set_index("au")
    return [{"eval_dataset": name, "variant": variant, "fold": str(single.fold.iloc[0]), "au": au,
             "f1_single": float(s.loc[au, "f1"]), "f1_mixed": float(m.loc[au, "f1"]),
             "diff": float(m.loc[au, "f1"] - s.loc[au, "f1"]), "n": int(m.loc[au, "n"]),
             "single_run": run} for au in s.index if au in m.index or au == AVG]
