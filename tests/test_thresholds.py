"""Validation-chosen thresholds: the choice rule by hand, the held-out subjects, and a stage
run whose thresholds do not move when the test fold's labels are poisoned."""
import numpy as np
import pandas as pd
import pytest

from conftest import SHARED, run_stages, write_mini_dataset
from pipeline.config import load_config
from pipeline.errors import InputError
from pipeline.evaluation.thresholds import ThresholdSource, choose_thresholds, f1_at
from pipeline.folds import validation_rows, validation_subjects
from store import tables
from store.catalog import Catalog
from store.provenance import read_provenance

NAN = np.nan
BLAZE = SHARED / "weights" / "blazeface" / "blazeface.pth"


def test_choice_by_hand():
    # AU 1: above 0.1 all 5 positive (F1 6/8); in (0.1, 0.3] 4 (tp 3 fp 1: 6/7); (0.3, 0.35] 3
    # (4/6); (0.35, 0.6] 2 (4/5); (0.6, 0.8] 1 (2/4). Best 6/7 at 0.15, 0.2, 0.25, 0.3: the tie
    # goes to the one closest to 0.5, i.e. 0.3. AU 2: no positive: fixed. AU 3: NaN pairs out.
    p = np.array([[0.1, 0.2, 0.9], [0.3, 0.4, NAN], [0.35, 0.6, 0.7], [0.6, 0.1, 0.2], [0.8, 0.9, 0.4]])
    y = np.array([[0, 0, 1], [1, 0, 1], [0, 0, NAN], [1, 0, 0], [1, NAN, 0]])
    assert f1_at(p[:, 0], y[:, 0], np.array([0.1, 0.3, 0.35, 0.6, 0.8])) == pytest.approx(
        [0.75, 6 / 7, 4 / 6, 0.8, 0.5])
    thr, f1, src = choose_thresholds(p, y, 0.5)
    assert thr[0] == 0.3 and f1[0] == pytest.approx(6 / 7)
    assert thr[1] == 0.5 and src[1] is ThresholdSource.FIXED_NO_POSITIVE
    # AU 3: scored pairs (0.9, 1), (0.2, 0), (0.4, 0): F1 1 from 0.45 to 0.9; closest to 0.5: 0.5
    assert thr[2] == 0.5 and f1[2] == 1.0 and src[2] is ThresholdSource.VALIDATION


def test_validation_subjects_are_seeded_training_subjects_only():
    names = [f"S{i}" for i in range(10)]
    a = validation_subjects(names * 3, 0.2, 0)
    assert len(a) == 2 and a == validation_subjects(list(reversed(names)), 0.2, 0)
    assert validation_subjects(names, 0.2, 1) != a or validation_subjects(names, 0.2, 2) != a
    assert len(validation_subjects(["A", "B"], 0.9, 0)) == 1  # one is always left to train on
    with pytest.raises(InputError, match="at least 2"):
        validation_subjects(["A"], 0.5, 0)
    subjects = np.array(["A", "A", "B", "C", "D"])
    rows, held = validation_rows(subjects, np.array([1, 1, 2, 2, 3]), 1, 0.5, 0)
    assert "A" not in held and len(held) == 2 and not rows[:2].any()  # test fold 1: never held


def _thresholds(cfg):
    cat = Catalog(cfg.store)
    t = tables.latest(cat, "thresholds", cfg.dataset.name).to_pandas()
    return t[t.fold == "1"].set_index("au")


def test_poisoned_test_fold_leaves_thresholds_unchanged(tmp_path):
    path = write_mini_dataset(tmp_path, name="val", au_set="disfa", n_subjects=9, n_frames=8,
                              train={"variants": ["au_fan"], "folds": [1]},
                              eval={"threshold_choice": "validation", "validation_fraction": 0.34})
    cfg = load_config(path)
    run_stages(cfg, "manifest", "faces", "features", "prior", "train", "evaluate")
    cat = Catalog(cfg.store)
    head = cat.head_checkpoint(cfg, "au_fan", 1)
    rec = read_provenance(head)
    held = rec["validation_subjects"]
    assert len(held) == 2 and not {"S0", "S3", "S6"} & set(held)  # fold 1's test subjects
    assert rec["n_train_frames"] == 4 * 8  # 6 training subjects, 2 of them held out
    before = _thresholds(cfg)
    assert set(before.source) >= {"validation"} and (before.n_val_subjects == 2).all()

    csv = cfg.dataset.manifest_file
    df = pd.read_csv(csv)
    aus = [c for c in df.columns if c.startswith("AU")]
    test = df.fold == 1
    df.loc[test, aus] = 1 - df.loc[test, aus]  # every test-fold label flipped
    df.to_csv(csv, index=False)
    run_stages(cfg, "manifest", "faces", "features", "prior", "train", "evaluate")
    assert read_provenance(head)["key"] == rec["key"]  # the head did not see the test fold either
    after = _thresholds(cfg)
    assert after.run.iloc[0] != before.run.iloc[0]  # a new run, on the poisoned labels
    assert not np.allclose(after.f1_fixed, before.f1_fixed)  # the poison reached the test scores
    pd.testing.assert_series_equal(after.threshold, before.threshold)
    pd.testing.assert_series_equal(after.f1_validation, before.f1_validation)

    from pipeline.config import FacesConfig, Variant
    from pipeline.predict.bundle import read_spec
    from stages.bundles import export, list_models

    if not BLAZE.exists():
        pytest.skip(f"{BLAZE} absent: a bundle needs detector weights")
    bundle = export(cfg, cat, Variant.AU_FAN, 1, tmp_path / "bundles" / "b",
                    detector=FacesConfig(detector_weights=BLAZE))
    spec = read_spec(bundle)
    want = before.threshold.drop("Avg")
    assert spec.thresholds == pytest.approx(want.to_dict())
    assert spec.provenance["thresholds"]["subjects"] == held
    assert not set(held) & set(spec.provenance["trained_on_subjects"])
    note = list_models(tmp_path / "bundles")[0]["thresholds"]
    assert "chosen on 2 validation subjects" in note and held[0] in note
