"""Mixed-dataset training on the 15-AU union (store/mix.py), end to end on the real BP4D and
DISFA label tables with synthetic pixels: the mixed manifest, masked loss and metrics, per-dataset
folds, the comparison with single-dataset models, and the 15-AU bundle."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import BLAZE, SHARED, run_stages, write_mini_dataset
from pipeline.aus import AUSet
from pipeline.config import FacesConfig, load_config
from pipeline.errors import ConfigError
from pipeline.labels import class_weights
from pipeline.learning.losses import weighted_bce
from pipeline.manifest import label_matrix
from store import manifests, tables
from store.catalog import Catalog
from store.identity import eval_id
from store.models import load_head

LABELS = SHARED / "data" / "labels"
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not (LABELS / "disfa_au_occurrence.parquet").exists(),
                                 reason=f"real label tables not found under {LABELS}")]
UNION = AUSet.UNION15.columns
TRAIN = {"epochs": 1, "max_steps_per_epoch": 2, "variants": ["au_fan", "aunet"]}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    store = root / "store"
    paths = {}
    for name, au_set, table in (("bp4d", "bp4d", "bp4d"), ("disfa", "disfa", "disfa")):
        paths[name] = write_mini_dataset(root / name, name=name, au_set=au_set, n_subjects=3,
                                         n_frames=10, store=store, seed=len(name),
                                         labels_from=LABELS / f"{table}_au_occurrence.parquet",
                                         train=TRAIN)
        member = load_config(paths[name])
        run_stages(member, "manifest", "faces", "features", "prior", "train", "evaluate")
    cfg = yaml.safe_load(paths["bp4d"].read_text())
    cfg["dataset"] = {"name": "bp4d+disfa", "layout": "mix", "au_set": "union15",
                      "members": [str(paths["bp4d"]), str(paths["disfa"])]}
    mix_path = root / "mix.yaml"
    mix_path.write_text(yaml.safe_dump(cfg))
    mcfg = load_config(mix_path)
    summaries = {s: run_stages(mcfg, s) for s in
                 ("manifest", "faces", "features", "prior", "train", "evaluate", "report")}
    return mcfg, Catalog(store), summaries, paths


def test_mixed_manifest_reuses_the_members_and_marks_unlabelled_aus_unknown(mixed):
    cfg, cat, s, _ = mixed
    df = manifests.load(cat, "bp4d+disfa").to_pandas()
    assert len(df) == 60 and set(df.member) == {"bp4d", "disfa"}
    y = label_matrix(df, AUSet.UNION15)
    bp4d, disfa = (df.member == "bp4d").to_numpy(), (df.member == "disfa").to_numpy()
    for au in ("AU09", "AU25", "AU26"):  # DISFA's only: unknown on BP4D rows, never 0
        assert np.isnan(y[bp4d, UNION.index(au)]).all() and not np.isnan(y[disfa, UNION.index(au)]).any()
    for au in ("AU07", "AU10", "AU14", "AU15", "AU17", "AU23", "AU24"):  # BP4D's only
        assert np.isnan(y[disfa, UNION.index(au)]).all()
    # folds: fold k of the mix is fold k of every member; rows point into the members' stores
    for name in ("bp4d", "disfa"):
        member = manifests.load(cat, name).to_pandas()
        part = df[df.member == name].sort_values("member_row")
        assert list(part.fold) == list(member.fold) and list(part.member_row) == list(member.row)
    assert "mixed run uses its members'" in str(s["faces"]) or s["faces"] == {"mix": ["bp4d", "disfa"]} \
        or s["faces"].get("mix") == ["bp4d", "disfa"]
    assert not list((cat.dataset_dir("bp4d+disfa")).glob("features/*"))  # nothing copied


def test_unlabelled_aus_give_no_loss_and_no_metric(mixed):
    cfg, cat, s, _ = mixed
    df = manifests.load(cat, "bp4d+disfa").to_pandas()
    y = torch.from_numpy(label_matrix(df, AUSet.UNION15))
    logits = torch.zeros(y.shape, requires_grad=True)
    weighted_bce(logits, y, torch.ones(len(UNION))).backward()
    bp4d = torch.from_numpy((df.member == "bp4d").to_numpy())
    assert (logits.grad[bp4d][:, UNION.index("AU09")] == 0).all()
    assert (logits.grad[~bp4d][:, UNION.index("AU09")] != 0).all()
    # class weights per AU from the frames that label it: AU25 (DISFA's) over DISFA's rows only,
    # an AU both label over all rows; the weights' ratio is the rates' inverse ratio
    w = class_weights(y.numpy())
    yy = y.numpy()
    rate25 = yy[~bp4d.numpy(), UNION.index("AU25")].mean()
    both = max(("AU01", "AU02", "AU04", "AU06", "AU12"), key=lambda a: yy[:, UNION.index(a)].mean())
    rate_both = yy[:, UNION.index(both)].mean()
    assert rate25 > 0 and rate_both > 0
    assert w[UNION.index("AU25")] / w[UNION.index(both)] == pytest.approx(rate_both / rate25, rel=1e-5)
    run = tables.latest_run(cat, "bp4d+disfa", eval_id(cfg))  # not the cross-dataset test's
    m = tables.read_run(cat, "metrics", "bp4d+disfa", run).to_pandas()
    assert set(m.eval_dataset) == {"bp4d", "disfa", "bp4d+disfa"}
    assert "AU09" not in set(m[m.eval_dataset == "bp4d"].au) and "AU07" not in set(m[m.eval_dataset == "disfa"].au)
    pooled = m[(m.eval_dataset == "bp4d+disfa") & (m.variant == "au_fan") & (m.fold == "pooled")].set_index("au")
    per = m[(m.eval_dataset == "bp4d") & (m.variant == "au_fan") & (m.fold == "pooled")].set_index("au")
    assert pooled.loc["AU07", "n"] == per.loc["AU07", "n"]  # BP4D's test frames only
    assert set(pooled.index) == set(UNION) | {"Avg"}


def test_comparison_with_single_dataset_models(mixed):
    cfg, cat, s, _ = mixed
    run = tables.latest_run(cat, "bp4d+disfa", eval_id(cfg))  # not the cross-dataset test's
    comp = tables.read_run(cat, "comparison", "bp4d+disfa", run).to_pandas()
    assert set(comp.eval_dataset) == {"bp4d", "disfa"} and set(comp.variant) == {"au_fan", "aunet"}
    assert set(comp[comp.eval_dataset == "disfa"].au) == set(AUSet.DISFA.columns) | {"Avg"}
    assert set(comp.fold) == {"1", "2", "3", "mean"}
    np.testing.assert_allclose(comp["diff"], comp.f1_mixed - comp.f1_single)
    single = tables.read_run(cat, "metrics", "bp4d", comp.single_run.iloc[0]).to_pandas()
    want = single[(single.variant == "au_fan") & (single.fold == "mean") & (single.au == "AU01")].f1.iloc[0]
    got = comp[(comp.eval_dataset == "bp4d") & (comp.variant == "au_fan") & (comp.fold == "mean")
               & (comp.au == "AU01")].f1_single.iloc[0]
    assert got == pytest.approx(want)  # the single model's own scores, on the same frames
    sig = tables.read_run(cat, "significance", "bp4d+disfa", run).to_pandas()
    vs = sig[sig.baseline.str.startswith("single:")]
    assert set(vs.unit) == {"subject_f1", "avg_f1"} and set(vs.eval_dataset) == {"bp4d", "disfa"}
    md = (cat.rendered("bp4d+disfa") / "report.md").read_text()
    assert "Mixed vs single-dataset models" in md


def test_mixed_head_and_prior_and_bundle_cover_the_15_aus(mixed, tmp_path):
    cfg, cat, s, _ = mixed
    _, meta = load_head(cat.head_checkpoint(cfg, "aunet", 1))
    assert meta["au_columns"] == UNION
    prior = torch.load(cat.prior(cfg, 1), weights_only=True)
    assert prior["masked"] and prior["n_aus"] == 15
    from stages.bundles import export

    bundle = export(cfg, cat, "aunet", 1, tmp_path / "b", detector=FacesConfig(detector_weights=BLAZE))
    from pipeline.predict.bundle import read_spec

    assert read_spec(bundle).aus == UNION


def test_cross_dataset_evaluation_of_single_and_mixed_models(mixed, tmp_path):
    """The paper's Tables III-V from the same stores: a model scored on another dataset's test
    folds, on the AUs both label."""
    cfg, cat, s, paths = mixed
    shared = {"AU01", "AU02", "AU04", "AU06", "AU12"}  # the AUs BP4D and DISFA both label
    single = load_config(paths["bp4d"], {"eval.cross_datasets": ["disfa"]})  # BP4D -> DISFA
    run_stages(single, "evaluate")
    m = tables.read_run(cat, "metrics", "bp4d", tables.latest_run(cat, "bp4d", eval_id(single)))
    m = m.to_pandas()
    assert set(m.eval_dataset) == {"bp4d", "disfa"}
    assert set(m[m.eval_dataset == "disfa"].au) == shared | {"Avg"}
    # the mixed 15-AU model on a third dataset (12 BP4D-style AUs) it never trained on
    third = load_config(write_mini_dataset(tmp_path / "third", name="third", n_subjects=3,
                                           n_frames=6, store=cat.root, seed=7))
    run_stages(third, "manifest", "faces", "features")
    cross = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"cross_datasets": ("third",)})})
    run_stages(cross, "evaluate")
    m = tables.read_run(cat, "metrics", "bp4d+disfa",
                        tables.latest_run(cat, "bp4d+disfa", eval_id(cross))).to_pandas()
    assert set(m[m.eval_dataset == "third"].au) == set(AUSet.BP4D.columns) | {"Avg"}
    assert m[m.eval_dataset == "third"].f1.notna().all()


def test_mix_refuses_members_that_do_not_fit(mixed, tmp_path):
    cfg, cat, s, paths = mixed
    other = yaml.safe_load(paths["disfa"].read_text())
    other["faces"]["eye_distance"] = 0.25
    bad = tmp_path / "disfa-other.yaml"
    bad.write_text(yaml.safe_dump(other))
    with pytest.raises(ConfigError, match="faces settings differ"):
        run_stages(cfg.model_copy(update={"dataset": cfg.dataset.model_copy(
            update={"members": (paths["bp4d"], bad)})}), "manifest")
    with pytest.raises(ConfigError, match="au_set"):
        run_stages(cfg.model_copy(update={"dataset": cfg.dataset.model_copy(
            update={"au_set": AUSet.BP4D})}), "manifest")
