"""Folds and label statistics, checked against the real BP4D / DISFA label tables in ../shared."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.aus import AUSet
from pipeline.config import DatasetConfig, FoldScheme, Layout, OnBadInput
from pipeline.folds import assign_folds, kfold_of, standard_fold_of
from pipeline.labels import class_weights, cooccurrence, positive_rates
from pipeline.manifest import ManifestError, ManifestReport, label_matrix

REAL = {Layout.BP4D: ("bp4d_au_occurrence.parquet", AUSet.BP4D, 41),
        Layout.DISFA: ("disfa_au_occurrence.parquet", AUSet.DISFA, 27)}


@pytest.fixture(scope="module", params=[Layout.BP4D, Layout.DISFA], ids=lambda l: l.value)
def real(request, shared_dir):
    name, au_set, n_subjects = REAL[request.param]
    df = pd.read_parquet(shared_dir / "data" / "labels" / name)
    return request.param, au_set, n_subjects, df


def test_standard_folds_match_the_real_label_tables(real):
    layout, _, n_subjects, df = real
    per_subject = df.groupby("subject")["fold"].unique()
    assert per_subject.map(len).eq(1).all()  # the tables themselves are subject-exclusive
    table = {s: int(f[0]) for s, f in per_subject.items()}
    assert standard_fold_of(layout) == table  # same subjects, same folds, none extra
    assert len(table) == n_subjects and set(table.values()) == {1, 2, 3}


def test_assign_folds_reproduces_every_rows_fold(real):
    layout, au_set, _, df = real
    cfg = DatasetConfig(name="real", layout=layout, root=Path("/nonexistent"), au_set=au_set)
    out = assign_folds(df.drop(columns="fold"), cfg, ManifestReport())
    np.testing.assert_array_equal(out["fold"].to_numpy(), df["fold"].to_numpy())


def test_class_weights_follow_eq1_on_each_training_fold(real):
    _, au_set, _, df = real
    for k in (1, 2, 3):
        train = df[df["fold"] != k]
        r = train[au_set.columns].mean().to_numpy()  # positive rate per AU (all labels known)
        inv = 1.0 / r
        w = class_weights(label_matrix(train, au_set))
        np.testing.assert_allclose(w, inv / inv.sum(), rtol=1e-5)
        assert w.sum() == pytest.approx(1.0, abs=1e-6)
        assert np.argmax(w) == np.argmin(r) and np.argmin(w) == np.argmax(r)
        w_n = class_weights(label_matrix(train, au_set), normalise_to="n_aus")
        np.testing.assert_allclose(w_n, w * len(au_set.columns), rtol=1e-5)


def test_cooccurrence_is_sane(real):
    layout, au_set, _, df = real
    y = label_matrix(df, au_set)  # (N, n_AU), no unknowns in these tables
    c = cooccurrence(y)
    r = positive_rates(y)
    np.testing.assert_allclose(np.diag(c), 1.0)
    assert ((c >= 0) & (c <= 1)).all()
    # Bayes: P(j|i) P(i) = P(i|j) P(j) = P(i and j)
    np.testing.assert_allclose(c * r[:, None], (c * r[:, None]).T, atol=1e-9)
    at = {c_: i for i, c_ in enumerate(au_set.columns)}
    given = lambda a, b: c[at[b], at[a]]  # P(a | b)
    # Inner and outer brow raisers move together (surprise): far above AU02's base rate.
    assert given("AU02", "AU01") > 0.45 and given("AU02", "AU01") > 2.5 * r[at["AU02"]]
    assert given("AU01", "AU02") > 0.6
    # Cheek raiser and lip corner puller (Duchenne smile).
    assert given("AU12", "AU06") > 0.7 if layout is Layout.BP4D else given("AU12", "AU06") > 0.6
    if layout is Layout.BP4D:  # brow lowerer vs outer brow raiser: below AU02's base rate
        assert given("AU02", "AU04") < r[at["AU02"]]
    else:  # a smile parts the lips
        assert given("AU25", "AU12") > 2.5 * r[at["AU25"]]


def test_label_statistics_skip_unknown_labels():
    y = np.array([[1, np.nan], [0, 1], [np.nan, 0], [1, 1]], dtype=np.float32)  # (4, 2)
    np.testing.assert_allclose(positive_rates(y), [2 / 3, 2 / 3])
    c = cooccurrence(y)
    assert c[0, 1] == 1.0  # AU a on in rows 0 and 3; b known only in row 3, where it is on
    assert c[1, 0] == 0.5  # b on in rows 1 and 3; a is 0 then 1
    with pytest.raises(ValueError, match="no AU has a positive"):
        class_weights(np.zeros((3, 2), dtype=np.float32))


def test_kfold_is_subject_exclusive_balanced_and_seeded():
    subjects = [f"S{i:02d}" for i in range(10) for _ in range(3)]  # 10 subjects, 3 frames each
    folds = kfold_of(subjects, 3, seed=0)
    assert sorted(folds) == sorted(set(subjects)) and set(folds.values()) == {1, 2, 3}
    sizes = np.bincount(list(folds.values()))[1:]
    assert sizes.max() - sizes.min() <= 1
    assert kfold_of(subjects, 3, seed=0) == folds
    assert kfold_of(list(reversed(subjects)), 3, seed=0) == folds  # input order does not matter
    # the seed decides the folds: another seed, other folds (GroupKFold used to ignore it)
    assert kfold_of(subjects, 3, seed=1) != folds
    assert len({tuple(sorted(kfold_of(subjects, 3, seed=s).items())) for s in range(5)}) == 5
    with pytest.raises(ValueError, match="2 subjects cannot make 3"):
        kfold_of(["a", "b"], 3)


# Golden: subjects with these frame counts, seed 0. The seeded order is SHA-256("0:name"):
# F002 F003 M003 M002 M001 F004 F001; each goes to the fold with the fewest frames so far:
# F002 3 -> 1 (3,0,0); F003 6 -> 2 (3,6,0); M003 4 -> 3 (3,6,4); M002 2 -> 1 (5,6,4);
# M001 8 -> 3 (5,6,12); F004 7 -> 1 (12,6,12); F001 5 -> 2 (12,11,12). A change here changes
# every k-fold user's splits: it must be on purpose.
GOLDEN_FRAMES = {"F001": 5, "F002": 3, "M001": 8, "M002": 2, "F003": 6, "M003": 4, "F004": 7}
GOLDEN_SEED0 = {"F002": 1, "F003": 2, "M003": 3, "M002": 1, "M001": 3, "F004": 1, "F001": 2}
GOLDEN_SEED7 = {"F002": 1, "M003": 2, "F003": 3, "M001": 1, "M002": 2, "F004": 3, "F001": 2}


def test_kfold_golden_assignment():
    frames = [s for s, n in GOLDEN_FRAMES.items() for _ in range(n)]
    assert kfold_of(frames, 3, seed=0) == GOLDEN_SEED0
    assert kfold_of(frames, 3, seed=7) == GOLDEN_SEED7
    per_fold = np.bincount([GOLDEN_SEED0[s] for s in frames])[1:]
    assert per_fold.tolist() == [12, 11, 12]  # balanced by frames


def test_assign_folds_uses_dataset_fold_seed():
    frames = [s for s, n in GOLDEN_FRAMES.items() for _ in range(n)]
    df = pd.DataFrame({"subject": frames})
    for seed, golden in ((0, GOLDEN_SEED0), (7, GOLDEN_SEED7)):
        cfg = DatasetConfig(name="k", layout=Layout.MANIFEST, root=Path("/x"), au_set=AUSet.BP4D,
                            folds=FoldScheme.KFOLD, fold_seed=seed)
        out = assign_folds(df, cfg, ManifestReport())
        assert out["fold"].tolist() == [golden[s] for s in frames]


@pytest.mark.parametrize("policy", list(OnBadInput))
def test_subject_in_no_standard_fold(policy):
    df = pd.DataFrame({"subject": ["F001", "F001", "Z999"], "frame": [1, 2, 1]})
    cfg = DatasetConfig(name="b", layout=Layout.BP4D, root=Path("/x"), au_set=AUSet.BP4D,
                        folds=FoldScheme.STANDARD, on_bad_input=policy)
    report = ManifestReport(policy=policy)
    if policy is OnBadInput.RAISE:
        with pytest.raises(ManifestError, match=r"subject Z999.*subject_in_no_fold"):
            assign_folds(df, cfg, report)
        return
    out = assign_folds(df, cfg, report)
    assert list(out["subject"]) == ["F001", "F001"] and list(out["fold"]) == [3, 3]
    assert report.left_out == {"subject_in_no_fold": 1}


def test_standard_folds_follow_the_au_set_in_other_layouts():
    """BP4D as a community list still gets BP4D's standard folds (recognised by its AU set)."""
    import pandas as pd

    from pipeline.aus import AUSet
    from pipeline.config import DatasetConfig, FoldScheme, Layout
    from pipeline.manifest import ManifestReport

    cfg = DatasetConfig(name="b", layout=Layout.LIST, root=".", au_set=AUSet.BP4D,
                        folds=FoldScheme.STANDARD)
    df = pd.DataFrame({"subject": ["F004", "F003", "F001"]})
    out = assign_folds(df, cfg, ManifestReport())
    assert out["fold"].tolist() == [1, 2, 3]
