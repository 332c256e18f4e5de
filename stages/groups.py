"""Rows of the `groups` report table: F1 per group of subjects, with subject-level bootstrap
intervals and a permutation test between the groups of each attribute.

The groups come from `dataset.subjects` (a CSV: a `subject` column and any other columns, each
an attribute such as sex or age band); without one, the demo dataset's own `subjects.csv` (written
with its data: skin-tone halves), or for BP4D subject names (F001, M012, ...) the built-in
attribute `sex` from the name's first letter. Only this dataset's own test frames
are scored (the groups describe its subjects); every fold's test frames pooled.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import EvalConfig, Layout, RunConfig
from pipeline.datasets.demo import SUBJECTS_FILE
from pipeline.errors import InputError
from pipeline.evaluation.groups import MIN_GROUP_SUBJECTS, bootstrap_group, permutation_test
from pipeline.evaluation.metrics import AVG
from pipeline.evaluation.stats import subject_counts
from stages.scoring import arrays

BP4D_SUBJECT = re.compile(r"^[FM]\d{3}$")  # BP4D(+): F = female, M = male (the dataset's naming)
BUILT_IN = "built-in: BP4D subject prefix"
CI_LEVEL = 0.95
TOO_SMALL, TESTED, UNTESTED = "too_small", "tested", "alone"  # `status` of a group's rows


def subject_table(cfg: RunConfig, subjects: list[str]) -> tuple[pd.DataFrame, str]:
    """(subject -> attribute columns, where they came from); empty when there are none."""
    path = cfg.dataset.subjects
    if path is None and cfg.dataset.layout is Layout.DEMO:  # written with the data, from its settings
        path = cfg.dataset.root / SUBJECTS_FILE
    if path is not None:
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
            raise InputError(f"dataset.subjects: cannot read {path}: {e}") from None
        if "subject" not in df:
            raise InputError(f"dataset.subjects: {path} needs a `subject` column (it has "
                             f"{', '.join(df.columns)})")
        if df.subject.duplicated().any():
            raise InputError(f"dataset.subjects: {path} lists subject "
                             f"{df.subject[df.subject.duplicated()].iloc[0]} twice")
        return df.set_index("subject"), Path(path).name
    if subjects and all(BP4D_SUBJECT.match(s) for s in subjects):
        return pd.DataFrame({"sex": [s[0] for s in subjects]}, index=pd.Index(subjects, name="subject")), BUILT_IN
    return pd.DataFrame(), ""


def group_rows(pred: pd.DataFrame, dataset: str, aus: list[str], table: pd.DataFrame,
               source: str, ev: EvalConfig) -> pd.DataFrame:
    """Per (variant, attribute, group, AU or Avg): F1 pooled over the group's subjects' test
    frames, its bootstrap interval, and the attribute's permutation p-value (Avg rows)."""
    rows = []
    own = pred[pred.eval_dataset == dataset]
    for variant, g in own.groupby("variant", sort=True):
        _, bp, y, face = arrays(g, aus)
        bp[~face] = np.nan
        frame_subject = g["subject"].astype(str).to_numpy()  # (N,)
        names, c = subject_counts(bp, y, frame_subject)  # (S,), (S, 4, n_AU)
        for attr in table.columns:
            labels = table[attr].reindex(names).fillna("").astype(str).to_numpy()  # (S,)
            sizes = {k: int((labels == k).sum()) for k in sorted(set(labels) - {""})}
            big = [k for k, n in sizes.items() if n >= MIN_GROUP_SUBJECTS]
            keep = np.isin(labels, big)
            stat, p = permutation_test(c[keep], labels[keep], ev.permutations, ev.seed)
            for k, n in sizes.items():
                m = labels == k
                status = TOO_SMALL if n < MIN_GROUP_SUBJECTS else TESTED if len(big) > 1 else UNTESTED
                b = bootstrap_group(c[m], 0 if status == TOO_SMALL else ev.bootstrap, ev.seed, CI_LEVEL)
                base = {"eval_dataset": dataset, "variant": variant, "attribute": attr, "group": k,
                        "source": source, "n_subjects": n, "n_frames": int((np.isin(frame_subject, names[m]) & face).sum()),
                        "status": status, "level": CI_LEVEL, "n_boot": ev.bootstrap,
                        "n_perm": ev.permutations if status == TESTED else 0, "seed": ev.seed}
                for j, au in enumerate(aus):
                    rows.append(base | {"au": au, "f1": float(b["f1"][j]), "ci_lo": float(b["f1_lo"][j]),
                                        "ci_hi": float(b["f1_hi"][j]), "spread": np.nan, "p_perm": np.nan})
                tested = status == TESTED
                rows.append(base | {"au": AVG, "f1": float(b["avg"]), "ci_lo": b["avg_lo"], "ci_hi": b["avg_hi"],
                                    "spread": stat if tested else np.nan, "p_perm": p if tested else np.nan})
    return pd.DataFrame(rows)


def run_rows(pred: pd.DataFrame, scored: dict[str, list[str]], cfg: RunConfig) -> pd.DataFrame:
    """The groups rows of an evaluation run (empty without subject attributes, or for a mix,
    whose rows are scored under its members' names)."""
    name = cfg.dataset.name
    if name not in scored:
        return pd.DataFrame()
    own = pred[pred.eval_dataset == name]
    table, source = subject_table(cfg, sorted(own.subject.astype(str).unique()))
    if not len(table.columns):
        return pd.DataFrame()
    return group_rows(own, name, scored[name], table, source, cfg.eval)
