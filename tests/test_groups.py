"""Results per group: the subject bootstrap and the permutation test against values worked
out by hand, and the rows of the groups table (BP4D's built-in F/M attribute, small groups)."""
import numpy as np
import pandas as pd
import pytest

from pipeline.config import EvalConfig, Layout
from pipeline.evaluation.groups import bootstrap_group, permutation_test, pooled_f1
from stages.groups import BUILT_IN, group_rows, subject_table


def _c(tp, fp, fn, tn=0):
    return np.array([tp, fp, fn, tn])[:, None]  # (4, 1): one AU


# subject A: tp 2 (F1 1); subject B: fp 1, fn 1 (F1 0); both together: 2*2 / (4 + 1 + 1) = 2/3
TWO = np.stack([_c(2, 0, 0), _c(0, 1, 1)])  # (S=2, 4, 1)


def test_pooled_f1_averages_only_present_aus():
    c = np.concatenate([TWO, np.stack([_c(0, 3, 0), _c(0, 0, 0)])], axis=2)  # AU 2: no positive
    f1, avg = pooled_f1(c.sum(0))
    assert f1.tolist() == pytest.approx([2 / 3, 0.0]) and avg == pytest.approx(2 / 3)


def test_group_bootstrap_matches_the_replicate_distribution_by_hand():
    # replicates: {A, A} F1 1 (prob 1/4), {A, B} 2/3 (1/2), {B, B} 0 (1/4). A 90% interval spans
    # the 5th and 95th percentiles: 0 and 1; a 40% one (30th, 70th) is 2/3 at both ends.
    wide = bootstrap_group(TWO, 4000, 0, 0.9)
    assert wide["avg"] == pytest.approx(2 / 3) and wide["f1"][0] == pytest.approx(2 / 3)
    assert (wide["avg_lo"], wide["avg_hi"]) == (0.0, 1.0)
    assert (wide["f1_lo"][0], wide["f1_hi"][0]) == (0.0, 1.0)
    narrow = bootstrap_group(TWO, 4000, 0, 0.4)
    assert narrow["avg_lo"] == pytest.approx(2 / 3) and narrow["avg_hi"] == pytest.approx(2 / 3)
    none = bootstrap_group(TWO, 0, 0, 0.9)
    assert np.isnan(none["avg_lo"]) and none["avg"] == pytest.approx(2 / 3)


def test_permutation_p_value_by_hand():
    # group a: two subjects with tp 1 (F1 1); group b: two with fn 1 (F1 0): spread 1. Of the 6
    # equally likely labellings only 2 keep the pairs apart (spread 1), the 4 mixed ones give
    # 2/3 in both groups (spread 0): p -> 1/3.
    c = np.stack([_c(1, 0, 0), _c(1, 0, 0), _c(0, 0, 1), _c(0, 0, 1)])
    stat, p = permutation_test(c, np.array(["a", "a", "b", "b"]), 3000, 0)
    assert stat == 1.0 and p == pytest.approx(1 / 3, abs=0.03)
    assert np.isnan(permutation_test(c, np.array(["a"] * 4), 100, 0)[1])


def _pred(subjects: list[str], frames: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = len(subjects) * frames
    y = rng.integers(0, 2, n)
    return pd.DataFrame({"eval_dataset": "bp4d", "variant": "au_fan", "fold": 1,
                         "subject": np.repeat(subjects, frames), "face_found": True,
                         "AU01_prob": np.where(rng.random(n) < 0.7, y, 1 - y).astype(float),
                         "AU01_pred": pd.array(y, dtype="Int8"), "AU01_label": pd.array(y, dtype="Int8")})


def test_bp4d_prefix_groups_and_a_too_small_group(tmp_path):
    subjects = ["F001", "F002", "F003", "M001", "M002"]
    cfg = type("C", (), {"dataset": type("D", (), {"subjects": None, "layout": Layout.BP4D})()})()
    table, source = subject_table(cfg, subjects)
    assert source == BUILT_IN and table.sex.tolist() == ["F", "F", "F", "M", "M"]
    rows = group_rows(_pred(subjects), "bp4d", ["AU01"], table, source, EvalConfig(bootstrap=50, permutations=50))
    avg = rows[rows.au == "Avg"].set_index("group")
    assert avg.loc["M", "status"] == "too_small" and np.isnan(avg.loc["M", "ci_lo"])
    assert avg.loc["F", "status"] == "alone" and np.isnan(avg.loc["F", "p_perm"])  # no second group
    assert avg.loc["F", "n_subjects"] == 3 and avg.loc["F", "n_frames"] == 12

    csv = tmp_path / "subjects.csv"
    csv.write_text("subject,band\nF001,young\nF002,young\nF003,young\nM001,old\nM002,old\nM003,old\n")
    cfg.dataset.subjects = csv
    table, source = subject_table(cfg, subjects + ["M003"])
    rows = group_rows(_pred(subjects + ["M003"]), "bp4d", ["AU01"], table, source,
                      EvalConfig(bootstrap=50, permutations=50))
    avg = rows[rows.au == "Avg"].set_index("group")
    assert (avg.status == "tested").all() and avg.p_perm.between(0, 1).all()
    assert avg.spread.iloc[0] == pytest.approx(abs(avg.f1["young"] - avg.f1["old"]))


def test_the_demo_reads_its_own_subjects_file_without_a_setting(tmp_path):
    (tmp_path / "subjects.csv").write_text("subject,skin_tone\nS01,darker\nS02,lighter\n")
    cfg = type("C", (), {"dataset": type("D", (), {"subjects": None, "layout": Layout.DEMO,
                                                   "root": tmp_path})()})()
    table, source = subject_table(cfg, ["S01", "S02"])
    assert source == "subjects.csv" and table.skin_tone.to_dict() == {"S01": "darker", "S02": "lighter"}
