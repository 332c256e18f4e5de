"""Golden tests: t and p equal scipy's; subject test and bootstrap are deterministic."""
import numpy as np
import pytest
from scipy import stats

from pipeline.evaluation.stats import (PairedUnit, bootstrap_f1_diff, frame_scores, frame_test,
                            subject_f1, subject_test)


def _pair(seed=0, n=120):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 4)) < 0.35).astype(float)
    flip_a, flip_b = rng.random((n, 4)) < 0.30, rng.random((n, 4)) < 0.15
    a, b = np.where(flip_a, 1 - y, y), np.where(flip_b, 1 - y, y)
    y[rng.random((n, 4)) < 0.05] = np.nan
    subjects = np.array([f"S{i % 6}" for i in range(n)])
    return a, b, y, subjects


def test_hand_built_pair_equals_scipy():
    y = np.array([[1, 0], [0, 0], [1, 1], [0, 1], [1, 1]], float)
    a = np.array([[0, 0], [1, 0], [1, 0], [0, 1], [0, 1]], float)
    b = np.array([[1, 0], [0, 0], [1, 1], [0, 0], [1, 1]], float)
    acc_a, acc_b = np.array([.5, .5, .5, 1, .5]), np.array([1, 1, 1, .5, 1])
    np.testing.assert_allclose(frame_scores(a, y, PairedUnit.FRAME_ACCURACY), acc_a)
    ref = stats.ttest_rel(acc_a, acc_b)
    res = frame_test(a, b, y)
    assert res["t"] == pytest.approx(ref.statistic) and res["p"] == pytest.approx(ref.pvalue)
    assert res["n"] == 5 and res["diff"] == pytest.approx(acc_b.mean() - acc_a.mean())
    # frame F1: 2|Y&P| / (|Y|+|P|), 1 when both empty
    np.testing.assert_allclose(frame_scores(a, y, PairedUnit.FRAME_F1), [0, 0, 2 / 3, 1, 2 / 3])


def test_no_face_frames_are_left_out_of_the_pair():
    a, b, y, _ = _pair()
    a2 = a.copy()
    a2[:10] = np.nan
    res = frame_test(a2, b, y)
    ref = frame_test(a[10:], b[10:], y[10:])
    assert res["n"] == ref["n"] and res["t"] == pytest.approx(ref["t"])


def test_subject_f1_skips_absent_aus():
    y = np.array([[1, 0], [0, 0]], float)
    pred = np.array([[1, 1], [0, 1]], float)
    names, f1 = subject_f1(pred, y, ["S1", "S1"])
    assert list(names) == ["S1"] and f1[0] == 1.0  # AU2 never shown: not averaged in


def test_subject_test_against_hand_computed_subject_f1():
    """Per-subject F1 by hand (F1 = 2tp / (2tp + fp + fn), averaged over the AUs the subject
    shows), then the paired t-test by hand; nothing of the project's own F1 code is used.

    S1 (4 frames): a: AU1 tp1 fp1 fn1 -> 1/2, AU2 tp1 fn1 -> 2/3, mean 7/12; b perfect -> 1.
    S2 (3 frames, AU2 never shown: left out): a: AU1 tp1 fp1 fn1 -> 1/2; b: tp1 fn1 -> 2/3.
    S3 (3 frames): a perfect -> 1; b: AU1 tp1 fp1 -> 2/3, AU2 tp1 fn1 -> 2/3, mean 2/3.
    d = fb - fa = (5/12, 1/6, -1/3): mean 1/12, sample sd sqrt(21)/12, t = 1/sqrt(7);
    df = 2, where the two-sided p is 1 - |t| / sqrt(2 + t^2) = 1 - 1/sqrt(15).
    """
    rows = [  # subject, labels, a, b
        ("S1", [1, 0], [1, 0], [1, 0]), ("S1", [1, 1], [0, 1], [1, 1]),
        ("S1", [0, 1], [0, 0], [0, 1]), ("S1", [0, 0], [1, 0], [0, 0]),
        ("S2", [1, 0], [1, 1], [1, 0]), ("S2", [0, 0], [1, 0], [0, 0]),
        ("S2", [1, 0], [0, 0], [0, 0]),
        ("S3", [0, 1], [0, 1], [0, 0]), ("S3", [1, 1], [1, 1], [1, 1]),
        ("S3", [0, 0], [0, 0], [1, 0]),
    ]
    order = [4, 0, 7, 1, 9, 5, 2, 8, 3, 6]  # subjects interleaved: frame order must not matter
    subj = np.array([rows[i][0] for i in order])
    y, a, b = (np.array([rows[i][k] for i in order], float) for k in (1, 2, 3))
    res = subject_test(a, b, y, subj)
    assert res["n"] == 3
    assert res["mean_a"] == pytest.approx((7 / 12 + 1 / 2 + 1) / 3)
    assert res["mean_b"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert res["diff"] == pytest.approx(1 / 12)
    assert res["t"] == pytest.approx(-1 / np.sqrt(7))  # scipy's sign: a - b
    assert res["p"] == pytest.approx(1 - 1 / np.sqrt(15))


def test_subject_test_and_bootstrap_deterministic():
    a, b, y, subj = _pair()
    s1, s2 = subject_test(a, b, y, subj), subject_test(a, b, y, subj)
    assert s1 == s2 and s1["n"] == 6
    _, fa = subject_f1(a, y, subj)
    _, fb = subject_f1(b, y, subj)
    ref = stats.ttest_rel(fa, fb)
    assert s1["t"] == pytest.approx(ref.statistic) and s1["p"] == pytest.approx(ref.pvalue)
    b1 = bootstrap_f1_diff(a, b, y, subj, n_boot=300, seed=7)
    perm = np.random.default_rng(3).permutation(len(y))  # frame order must not matter
    b2 = bootstrap_f1_diff(a[perm], b[perm], y[perm], subj[perm], n_boot=300, seed=7)
    assert b1 == pytest.approx(b2)
    assert b1["lo"] <= b1["diff"] <= b1["hi"] and b1["diff"] > 0  # b has fewer errors
    b3 = bootstrap_f1_diff(a, b, y, subj, n_boot=300, seed=8)
    assert b3["diff"] == b1["diff"] and (b3["lo"], b3["hi"]) != (b1["lo"], b1["hi"])


def test_shape_mismatch_refused():
    with pytest.raises(ValueError, match="same frames"):
        frame_test(np.zeros((3, 2)), np.zeros((4, 2)), np.zeros((3, 2)))


def test_bootstrap_point_estimate_is_the_avg_f1_difference():
    from pipeline.evaluation.metrics import AVG, au_scores

    a, b, y, subj = _pair(2)
    res = bootstrap_f1_diff(a, b, y, subj, n_boot=20, seed=0)
    aus = ["A", "B", "C", "D"]
    face = np.ones(len(y), bool)
    f1 = [au_scores(p, y, face, aus).set_index("au").loc[AVG, "f1"] for p in (a, b)]
    assert res["diff"] == pytest.approx(f1[1] - f1[0])


def test_significance_rows_sign_convention():
    """The variant better than AU-FAN: t < 0 (scipy.ttest_rel(AU-FAN, variant), the paper's
    Table XII) and diff = variant - AU-FAN > 0; swapping the two models flips both."""
    import pandas as pd

    from pipeline.config import EvalConfig
    from stages.scoring import significance_rows

    a, b, y, subjects = _pair(5, n=300)  # b (the variant) makes fewer errors
    rows = []
    for variant, pred in (("au_fan", a), ("aunet", b)):
        for i in range(len(y)):
            rows.append({"eval_dataset": "d", "variant": variant, "fold": 1, "row": i,
                         "subject": subjects[i], "face_found": True,
                         **{f"AU0{j + 1}_pred": pred[i, j] for j in range(4)},
                         **{f"AU0{j + 1}_prob": pred[i, j] for j in range(4)},
                         **{f"AU0{j + 1}_label": y[i, j] for j in range(4)}})
    pred = pd.DataFrame(rows)
    aus = ["AU01", "AU02", "AU03", "AU04"]
    sig = significance_rows(pred, {"d": aus}, EvalConfig(bootstrap=50)).set_index("unit")
    for unit in ("frame_accuracy", "frame_f1", "subject_f1"):
        assert sig.loc[unit, "t"] < 0 and sig.loc[unit, "diff"] > 0, unit
        assert sig.loc[unit, "mean_b"] > sig.loc[unit, "mean_a"]
    assert sig.loc["avg_f1", "diff"] > 0
    swapped = pred.assign(variant=pred.variant.map({"au_fan": "aunet", "aunet": "au_fan"}))
    sig2 = significance_rows(swapped, {"d": aus}, EvalConfig(bootstrap=50)).set_index("unit")
    for unit in ("frame_accuracy", "frame_f1", "subject_f1", "avg_f1"):
        assert np.sign(sig2.loc[unit, "diff"]) == -np.sign(sig.loc[unit, "diff"]), unit
