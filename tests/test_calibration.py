"""Calibration: ECE, Brier and reliability bins against values computed by hand."""
import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.calibration import brier, ece, reliability_bins
from stages.calibration import ALL_AUS, calibration_rows

# six scored pairs and one unscored (NaN label): bins 0, 1, 1, 8, 9, 6 of ten
P = np.array([0.05, 0.15, 0.12, 0.85, 0.95, 0.65, 0.5])
Y = np.array([0, 0, 1, 1, 1, 0, np.nan])
# bin gaps |frac_pos - mean_prob|: .05 (n 1), |.5 - .135| = .365 (n 2), .65, .15, .05 (n 1 each)
ECE = (0.05 + 2 * 0.365 + 0.65 + 0.15 + 0.05) / 6  # 0.271666...
BRIER = (0.05 ** 2 + 0.15 ** 2 + 0.88 ** 2 + 0.15 ** 2 + 0.05 ** 2 + 0.65 ** 2) / 6  # 0.2078166...


def test_ece_and_brier_match_the_hand_computed_values():
    assert ece(P, Y) == pytest.approx(0.2716666667, abs=1e-9) == pytest.approx(ECE)
    assert brier(P, Y) == pytest.approx(0.2078166667, abs=1e-9) == pytest.approx(BRIER)


def test_reliability_bins_count_and_means():
    r = reliability_bins(P, Y)
    assert r["count"].tolist() == [1, 2, 0, 0, 0, 0, 1, 0, 1, 1]
    assert r["mean_prob"][1] == pytest.approx(0.135) and r["frac_pos"][1] == 0.5
    assert np.isnan(r["mean_prob"][2]) and np.isnan(r["frac_pos"][2])


def test_edges_one_goes_to_the_last_bin_and_perfect_calibration_is_zero():
    r = reliability_bins(np.array([1.0, 0.0, 0.1]), np.array([1, 0, 0]))
    assert r["count"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert ece(np.array([0.0, 1.0]), np.array([0, 1])) == 0.0
    assert brier(np.array([0.0, 1.0]), np.array([0, 1])) == 0.0
    assert np.isnan(ece(np.array([np.nan]), np.array([1.0])))


def test_rows_per_au_and_pooled_over_aus_skip_no_face_frames():
    pred = pd.DataFrame({
        "eval_dataset": "d", "variant": "au_fan", "fold": [1, 1, 2, 2],
        "face_found": [True, True, True, False],
        "AU01_prob": [0.9, 0.2, 0.6, 0.99], "AU01_label": [1, 0, 0, 1],
        "AU02_prob": [0.3, 0.3, 0.8, 0.01], "AU02_label": [0, 1, 1, 0]})
    for c in ("AU01_label", "AU02_label"):
        pred[c] = pred[c].astype("Int8")
    pred["AU01_pred"] = pred["AU02_pred"] = pd.array([1, 0, 1, 0], dtype="Int8")
    rows = calibration_rows(pred, {"d": ["AU01", "AU02"]}).set_index(["fold", "au"])
    assert set(rows.index) == {(f, a) for f in ("1", "2", "pooled") for a in ("AU01", "AU02", ALL_AUS)}
    # pooled AU01: pairs (.9, 1), (.2, 0), (.6, 0); the no-face frame is left out
    assert rows.loc[("pooled", "AU01"), "n"] == 3
    assert rows.loc[("pooled", "AU01"), "brier"] == pytest.approx((0.01 + 0.04 + 0.36) / 3)
    # all AUs pooled: six pairs in bins 2 (.2 -> 0), 3 (.3, .3 -> 0, 1), 6 (.6 -> 0), 8, 9
    allr = rows.loc[("pooled", ALL_AUS)]
    assert allr["n"] == 6 and allr["n_pos"] == 3
    gap = 0.2 + 2 * abs(0.5 - 0.3) + 0.6 + abs(1 - 0.8) + abs(1 - 0.9)  # 1.5
    assert allr["ece"] == pytest.approx(0.25) == pytest.approx(gap / 6)
