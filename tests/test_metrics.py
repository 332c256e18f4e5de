"""Golden tests: per-AU scores equal scikit-learn's; masking; fold aggregates; co-occurrence."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from pipeline.labels import correlation
from pipeline.evaluation.metrics import (AVG, au_scores, cooccurrence_faithfulness, dependency_edges,
                              mean_over_folds)

AUS = ["AU01", "AU02", "AU04"]


def _fixture(seed=0, n=200):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.3, 0.5, 0.1]).astype(np.float64)
    p = np.clip(y * 0.4 + rng.random((n, 3)) * 0.7, 0, 1)
    y[rng.random((n, 3)) < 0.1] = np.nan  # unknown labels
    face = rng.random(n) > 0.05
    p[~face] = np.nan
    return p, y, face


def test_f1_equals_sklearn_with_masked_unknowns_and_no_face():
    p, y, face = _fixture()
    df = au_scores(p, y, face, AUS, threshold=0.5).set_index("au")
    for j, au in enumerate(AUS):
        keep = face & ~np.isnan(y[:, j])
        yt, yp = y[keep, j].astype(int), (p[keep, j] >= 0.5).astype(int)
        assert df.loc[au, "f1"] == pytest.approx(f1_score(yt, yp), abs=1e-12)
        assert df.loc[au, "precision"] == pytest.approx(precision_score(yt, yp, zero_division=0))
        assert df.loc[au, "recall"] == pytest.approx(recall_score(yt, yp, zero_division=0))
        assert df.loc[au, "accuracy"] == pytest.approx(accuracy_score(yt, yp))
        assert df.loc[au, "n"] == keep.sum()
        assert df.loc[au, "n_unknown"] == np.isnan(y[face, j]).sum()
    assert df.loc[AVG, "f1"] == pytest.approx(df.loc[AUS, "f1"].mean())
    assert (df["n_no_face"] == (~face).sum()).all()


def test_zero_division_matches_sklearn():
    y = np.array([[0.0], [0.0], [0.0]])
    p = np.array([[0.1], [0.2], [0.3]])
    df = au_scores(p, y, np.ones(3, bool), ["AU01"])
    assert df.loc[0, "f1"] == f1_score([0, 0, 0], [0, 0, 0], zero_division=0) == 0.0
    assert df.loc[0, "accuracy"] == 1.0


def test_bad_shapes_and_nan_with_face_are_refused():
    with pytest.raises(ValueError, match="shape mismatch"):
        au_scores(np.zeros((3, 2)), np.zeros((3, 3)), np.ones(3, bool), AUS)
    p = np.full((2, 3), 0.7)
    p[1, 0] = np.nan
    with pytest.raises(ValueError, match="position 1"):
        au_scores(p, np.zeros((2, 3)), np.ones(2, bool), AUS)


def test_mean_over_folds_vs_pooled():
    p, y, face = _fixture(1, 300)
    folds = np.repeat([1, 2, 3], 100)
    per = []
    for k in (1, 2, 3):
        m = folds == k
        per.append(au_scores(p[m], y[m], face[m], AUS).assign(fold=k))
    import pandas as pd
    mean = mean_over_folds(pd.concat(per)).set_index("au")
    for j, au in enumerate(AUS):
        expect = np.mean([f1_score(y[(folds == k) & face & ~np.isnan(y[:, j]), j].astype(int),
                                   (p[(folds == k) & face & ~np.isnan(y[:, j]), j] >= .5).astype(int))
                          for k in (1, 2, 3)])
        assert mean.loc[au, "f1"] == pytest.approx(expect)
    assert mean.loc[AVG, "f1"] == pytest.approx(mean.loc[AUS, "f1"].mean())
    pooled = au_scores(p, y, face, AUS).set_index("au")
    assert mean.loc["AU01", "n"] == pooled.loc["AU01", "n"]


def test_cooccurrence_perfect_and_broken():
    rng = np.random.default_rng(3)
    a = (rng.random(400) < 0.4).astype(float)
    y = np.stack([a, a, (rng.random(400) < 0.3).astype(float)], 1)  # AU01 == AU02
    face = np.ones(400, bool)
    same = cooccurrence_faithfulness(y.copy(), y, face)
    assert same["l2"] == 0.0 and same["dependency_f1"] == 1.0
    assert (0, 1, 1) in dependency_edges(y, 0.1, 0.05)
    broken = y.copy()
    broken[:, 1] = (rng.random(400) < 0.4)  # breaks the AU01-AU02 dependency
    res = cooccurrence_faithfulness(broken, y, face)
    expect = np.linalg.norm(correlation(broken) - correlation(y))
    assert res["l2"] == pytest.approx(expect)
    assert res["edges_label"] == 1 and res["edges_matched"] == 0 and res["dependency_f1"] == 0.0


def test_all_positive_baseline_rows_golden():
    """The all_positive rows: F1 = 2p / (1 + p) per AU on the frames with a face, per fold and
    as the mean over folds; positive_rate = p; no-face frames left out as for the models."""
    import pandas as pd

    from stages.scoring import ALL_POSITIVE, metric_rows

    # fold 1: AU01 positive on 1 of 4 face frames (p = 0.25 -> F1 0.4), AU02 on 2 of 4 (0.5 ->
    # 2/3); fold 2: AU01 3 of 4 (0.75 -> 6/7), AU02 0 of 4 (F1 0); one more frame without a face
    lab = {1: ([1, 0, 0, 0], [1, 1, 0, 0]), 2: ([1, 1, 1, 0], [0, 0, 0, 0])}
    rows = []
    for fold, (a1, a2) in lab.items():
        for i in range(5):
            face = i < 4
            rows.append({"eval_dataset": "d", "variant": "au_fan", "fold": fold, "row": i,
                         "subject": f"s{fold}", "face_found": face, "head_name": "h",
                         "AU01_prob": 0.1 if face else None, "AU02_prob": 0.1 if face else None,
                         "AU01_pred": 0 if face else None, "AU02_pred": 0 if face else None,
                         "AU01_label": a1[i] if face else 1, "AU02_label": a2[i] if face else 1})
    m = metric_rows(pd.DataFrame(rows), {"d": ["AU01", "AU02"]}, 0.5)
    base = m[m.variant == ALL_POSITIVE].set_index(["fold", "au"])
    assert base.loc[("1", "AU01"), "f1"] == pytest.approx(0.4)
    assert base.loc[("1", "AU02"), "f1"] == pytest.approx(2 / 3)
    assert base.loc[("2", "AU01"), "f1"] == pytest.approx(6 / 7)
    assert base.loc[("2", "AU02"), "f1"] == 0.0
    assert base.loc[("1", "Avg"), "f1"] == pytest.approx((0.4 + 2 / 3) / 2)
    assert base.loc[("mean", "Avg"), "f1"] == pytest.approx(((0.4 + 2 / 3) / 2 + 6 / 7 / 2) / 2)
    assert base.loc[("1", "AU01"), "positive_rate"] == 0.25
    assert base.loc[("2", "Avg"), "positive_rate"] == pytest.approx(0.375)
    assert base.loc[("1", "AU01"), "n_no_face"] == 1 and base.loc[("pooled", "Avg"), "n_no_face"] == 2
    assert (m[m.variant == "au_fan"].positive_rate.to_numpy() ==
            m[m.variant == ALL_POSITIVE].positive_rate.to_numpy()).all()  # the same frames
