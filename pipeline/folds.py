"""Subject-exclusive folds: the community's standard 3-fold lists, or k-fold for other data.

Fold k holds the test subjects of split k; a row with fold 0 is never a test frame (e.g. the
Aff-Wild2 training set when the official validation set is the test fold).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from pipeline.aus import AUSet
from pipeline.config import DatasetConfig, FoldScheme, Layout
from pipeline.errors import ConfigError, InputError
from pipeline.manifest import ManifestReport

STANDARD_FOLDS: dict[Layout, dict[int, tuple[str, ...]]] = {
    Layout.BP4D: {
        1: ("F004 F006 F007 F012 F014 F015 F017 F019 F021 M003 M006 M009 M015").split(),
        2: ("F003 F005 F011 F013 F020 F022 M002 M005 M010 M011 M013 M016 M017 M018").split(),
        3: ("F001 F002 F008 F009 F010 F016 F018 F023 M001 M004 M007 M008 M012 M014").split(),
    },
    Layout.DISFA: {
        1: "SN003 SN004 SN005 SN007 SN008 SN017 SN023 SN025 SN029".split(),
        2: "SN006 SN011 SN012 SN013 SN018 SN021 SN024 SN028 SN031".split(),
        3: "SN001 SN002 SN009 SN010 SN016 SN026 SN027 SN030 SN032".split(),
    },
}


_LAYOUT_OF_AU_SET = {AUSet.BP4D: Layout.BP4D, AUSet.DISFA: Layout.DISFA}


ALL_SUBJECTS = 0  # the "fold" of a model trained on every subject (deployment): no test fold


def fold_name(fold: int) -> str:
    """Folder and display name of a fold: fold1, fold2, ..., or `all` for every subject."""
    return "all" if fold == ALL_SUBJECTS else f"fold{fold}"


def training_rows(folds: np.ndarray, fold: int) -> np.ndarray:
    """(N,) bool: the rows a model of `fold` trains on: every row outside test fold k (fold-0
    rows included), or every row for ALL_SUBJECTS."""
    folds = np.asarray(folds)
    return np.ones(len(folds), bool) if fold == ALL_SUBJECTS else folds != fold


def standard_fold_of(layout: Layout) -> dict[str, int]:
    if layout not in STANDARD_FOLDS:
        raise ConfigError(f"no standard folds are built in for layout '{layout.value}'; "
                         "use folds: kfold")
    return {s: k for k, subjects in STANDARD_FOLDS[layout].items() for s in subjects}


def _seeded_key(seed: int, subject: str) -> str:
    """A subject's place in the seeded order: SHA-256 of "seed:subject" (hex). SHA-256 is a
    fixed standard (FIPS 180-4), so the order is the same on every machine, Python and numpy
    version; numpy's generators promise no such thing across releases."""
    return hashlib.sha256(f"{seed}:{subject}".encode()).hexdigest()


def kfold_of(subjects: list[str], n_folds: int, seed: int = 0) -> dict[str, int]:
    """Subject-exclusive k-fold, balanced by frames, seeded. `subjects`: one entry per frame.

    The subjects are put in a seeded order (sorted by `_seeded_key`, ties, which need a SHA-256
    collision, by name); each in turn goes to the fold holding the fewest frames so far (ties:
    the fewest subjects, then the lowest fold number). Every step is a plain comparison, so the
    assignment depends only on the subject names, their frame counts and the seed.
    """
    counts: dict[str, int] = {}
    for s in subjects:
        counts[s] = counts.get(s, 0) + 1
    if len(counts) < n_folds:
        raise InputError(f"{len(counts)} subjects cannot make {n_folds} subject-exclusive folds; "
                         "set dataset.n_folds lower")
    order = sorted(counts, key=lambda s: (_seeded_key(seed, s), s))
    frames = [0] * n_folds  # frames per fold so far
    members = [0] * n_folds  # subjects per fold so far
    out: dict[str, int] = {}
    for s in order:
        k = min(range(n_folds), key=lambda i: (frames[i], members[i], i))
        frames[k] += counts[s]
        members[k] += 1
        out[s] = k + 1
    return out


def assign_folds(df: pd.DataFrame, cfg: DatasetConfig, report: ManifestReport) -> pd.DataFrame:
    """Set the `fold` column; subjects in no fold are bad input (named)."""
    if cfg.folds is FoldScheme.COLUMN:
        if "fold" not in df or df["fold"].isna().any():
            n = len(df) if "fold" not in df else int(df["fold"].isna().sum())
            raise InputError(f"dataset '{cfg.name}': folds: column needs a `fold` value (an "
                             f"integer >= 0) on every row; {n} rows have none")
        return df.assign(fold=df["fold"].astype(int))
    # BP4D or DISFA in another layout (the community list format, a user manifest) still gets
    # its standard folds, recognised by its AU set.
    layout = cfg.layout if cfg.layout in STANDARD_FOLDS else _LAYOUT_OF_AU_SET.get(cfg.au_set, cfg.layout)
    mapping = (standard_fold_of(layout) if cfg.folds is FoldScheme.STANDARD
               else kfold_of(df["subject"].astype(str).tolist(), cfg.n_folds, cfg.fold_seed))
    fold = df["subject"].map(mapping)
    missing = fold.isna()
    if missing.any():
        for subject, n in df.loc[missing, "subject"].value_counts().items():
            report.bad("subject_in_no_fold", f"subject {subject}",
                       f"{n} frames of a subject that is in none of the standard folds", n=n)
        df, fold = df[~missing], fold[~missing]
    return df.assign(fold=fold.astype(int))


def holdout_subjects(train_subjects: list[str], fraction: float, seed: int) -> list[str]:
    """Held-out *training* subjects for model selection (never the test fold)."""
    uniq = sorted(set(train_subjects))
    n = max(1, int(round(len(uniq) * fraction)))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(uniq, size=min(n, len(uniq) - 1), replace=False).tolist())


def validation_subjects(train_subjects: list[str], fraction: float, seed: int) -> list[str]:
    """The training subjects held out as validation data (eval.threshold_choice: validation):
    round(fraction * S) of the S distinct subjects (at least 1, at most S - 1), the first in the
    seeded SHA-256 order of `_seeded_key` (the same on every machine). Sorted."""
    uniq = sorted(set(train_subjects))
    if len(uniq) < 2:
        raise InputError(f"{len(uniq)} training subject(s): a validation part needs at least 2 "
                         "(one to train on, one to choose thresholds on)")
    n = min(max(1, int(round(len(uniq) * fraction))), len(uniq) - 1)
    return sorted(sorted(uniq, key=lambda s: (_seeded_key(seed, s), s))[:n])


def validation_rows(subjects: np.ndarray, folds: np.ndarray, fold: int, fraction: float,
                    seed: int) -> tuple[np.ndarray, list[str]]:
    """((N,) bool: the rows of fold `fold`'s training data whose subject is held out for
    validation, the held-out subjects). Never a row of test fold `fold`."""
    subjects = np.asarray(subjects).astype(str)
    train = training_rows(folds, fold)
    held = validation_subjects(subjects[train].tolist(), fraction, seed)
    return train & np.isin(subjects, held), held
