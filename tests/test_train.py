"""Head training stage on a tiny real Zarr feature store: checkpoints, skip, kill-and-resume,
prediction, and the batch sampler / background loader it relies on."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pathlib import Path

import zarr

import stages.train as train_stage
from conftest import run_stages
from flows.cli import main
from pipeline.aus import AUSet
from pipeline.learning.batches import (BackgroundLoader, batch_buffer, chunk_local_batches, gather_shifted,
                              unique_rows)
from pipeline.config import Variant
from pipeline.errors import ConfigError, MissingArtifact, StaleArtifact
from pipeline.learning.inference import predict
from stages import runner
from store.catalog import Catalog
from store.features import checked as checked_features
from store.models import load_head
from store.provenance import read_provenance

COLS = AUSet.BP4D.columns
pytestmark = pytest.mark.usefixtures("one_thread")
NO_FACE = (5,)  # one frame of subject S0 (fold 1) has no face


@pytest.fixture
def ready(mini):
    """make(**kw) -> a mini dataset with manifest, crops and features (3 subjects x 12 frames)."""
    def make(**kw):
        cfg = mini(no_face=NO_FACE, **kw)
        run_stages(cfg, "manifest", "faces", "features")
        return cfg, Catalog(cfg.store)

    return make


def _train(cfg, **kw):
    return runner.execute("train", cfg, Catalog(cfg.store), progress=False, **kw)


def test_train_writes_checkpoints_skips_and_predicts(ready):
    cfg, cat = ready()
    run_stages(cfg, "prior")
    summary = _train(cfg, select={"folds": [1]})
    assert not summary["failed"]
    assert [(h["variant"], h["fold"]) for h in summary["heads"]] == [("au_fan", 1), ("aunet", 1)]
    store = checked_features(cfg, cat)
    for h in summary["heads"]:
        assert not h["skipped"] and len(h["history"]) == 2
        assert h["n_train_frames"] == 24  # folds 2 and 3: S1 and S2, every frame has a face
        final = cat.head_checkpoint(cfg, Variant(h["variant"]), 1)
        assert str(final) == h["path"] and final.exists()
        assert sorted(p.name for p in final.parent.glob("*.pt")) == ["epoch002.pt", "final.pt"]
        rec = read_provenance(final)
        assert set(rec["inputs"]) >= {"train_labels", "features"} and rec["sha256"]
        assert not rec["artifact"].startswith("/")
        model, meta = load_head(final)
        assert meta["au_columns"] == COLS and meta["epoch"] == 2 and len(meta["history"]) == 2
        # predictions are the head's own forward on the stored features, in the rows' order
        rows = np.array([7, 0, 3])
        trip = np.stack([rows, rows, np.minimum(rows + 1, 11)], 1) if model.temporal else None
        p = predict(model, store, rows, trip, batch_size=2)
        x = [torch.from_numpy(store.read(trip[:, j] if model.temporal else rows)) for j in (1, 0, 2)]
        with torch.no_grad():
            want = torch.sigmoid(model(*x) if model.temporal else model(x[0])).numpy()
        np.testing.assert_allclose(p, want, atol=1e-5)
    aunet = summary["heads"][1]
    assert aunet["triplets"]["boundary"] > 0 and aunet["triplets"]["missing_face"] == 2
    assert "prior" in read_provenance(aunet["path"])["inputs"]
    again = _train(cfg, select={"variants": ["au_fan"], "folds": [1]})
    assert [h["skipped"] for h in again["heads"]] == [True]
    assert "loss per epoch" in train_stage.format_summary(again)


def test_fold_outside_the_dataset_is_refused(ready):
    cfg, cat = ready()
    with pytest.raises(ConfigError, match="fold 7 is not a test fold of dataset 'mini' .*1, 2, 3"):
        _train(cfg, select={"folds": [7]})
    assert main(["train", "--config", str(Path(cfg.dataset.root).parent / "mini.yaml"),
                 "--fold", "7", "--quiet"]) == 2


def test_head_identity_covers_every_setting(ready):
    cfg, cat = ready()

    def head(**train):
        return cat.head_dir(cfg.model_copy(update={"train": cfg.train.model_copy(update=train)}),
                            Variant.AU_FAN, 1)

    base = head()
    for change in ({"lr": 1.4e-3}, {"weight_decay": 0.02}, {"lr_step_epochs": 3},
                   {"lr_gamma": 0.5}, {"shuffle_buffer": 9}, {"feature_shift": 0}):
        assert head(**change) != base, change
    assert head(lr=1e-4) != head(lr=1.4e-4)  # no rounding in names
    assert head(variants=(Variant.AU_FAN,), folds=(1,)) == base  # the unit selection is not


def test_incomplete_feature_store_refused(ready):
    cfg, cat = ready()
    g = zarr.open_group(str(cat.features(cfg)), mode="r+")
    g["shard_done"][1] = False
    with pytest.raises(StaleArtifact, match="aunet features"):
        _train(cfg, select={"variants": ["au_fan"]})


def test_disfa_heads_start_from_bp4d_heads(tmp_path, ready):
    """train.init_from: the DISFA head (8 AUs) takes the BP4D head's body; only fc2 is new."""
    bp4d_cfg, _ = ready(where="b", name="bp4dmini", train={"variants": ["au_tdn"]})
    bp4d = _train(bp4d_cfg)["heads"][0]
    src_yaml = Path(bp4d_cfg.dataset.root).parent / "bp4dmini.yaml"
    # lr 0 (and so no weight decay step): the trained DISFA body must equal the BP4D body exactly
    cfg, _ = ready(where="d", name="disfamini", au_set="disfa",
                   train={"variants": ["au_tdn"], "lr": 1e-30, "init_from": str(src_yaml)})
    disfa = _train(cfg)["heads"][0]
    assert disfa["fresh_params"] == ["classifier.fc2.bias", "classifier.fc2.weight"]
    assert "_from-bp4dmini-" in disfa["path"]
    src, dst = (torch.load(h["path"], weights_only=True)["state_dict"] for h in (bp4d, disfa))
    assert dst["classifier.fc2.weight"].shape == (8, 128) and src["classifier.fc2.weight"].shape == (12, 128)
    for k, v in src.items():
        if "fc2" not in k and "running" not in k and "num_batches" not in k:  # BN statistics move
            assert torch.equal(v, dst[k]), k
    assert read_provenance(disfa["path"])["inputs"]["init"] == read_provenance(bp4d["path"])["key"]
    untrained = tmp_path / "untrained.yaml"  # the BP4D config with another lr: never trained
    untrained.write_text(src_yaml.read_text().replace("lr: 0.001", "lr: 0.002"))
    missing = cfg.model_copy(update={"train": cfg.train.model_copy(update={"init_from": untrained})})
    with pytest.raises(MissingArtifact, match="no final au_tdn head of fold 1"):
        _train(missing)


def test_predict_checks_triplets(ready):
    cfg, cat = ready()
    from pipeline.models.heads import build_head

    store = checked_features(cfg, cat)
    tdn = build_head(Variant.AU_TDN, 12)
    with pytest.raises(ValueError, match="needs triplets"):
        predict(tdn, store, np.arange(3), None)
    with pytest.raises(ValueError, match=r"triplets\[:, 1\] == rows"):
        predict(tdn, store, np.arange(3), np.zeros((3, 3), np.int64))


def _kill_after(monkeypatch, epoch_to_die: int) -> None:
    def kill(unit, epoch):
        if epoch == epoch_to_die:
            raise KeyboardInterrupt(f"killed after epoch {epoch}")

    monkeypatch.setattr(train_stage, "_epoch_done", kill)


def test_kill_and_resume_continues_from_last_epoch(ready, monkeypatch):
    ref_cfg, _ = ready(where="ref", train={"epochs": 3, "variants": ["au_tdn"], "folds": [1]})
    ref = _train(ref_cfg)["heads"][0]
    cfg, cat = ready(where="run", train={"epochs": 3, "variants": ["au_tdn"], "folds": [1]})
    _kill_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg)
    folder = cat.head_dir(cfg, Variant.AU_TDN, 1)
    assert sorted(p.name for p in folder.glob("*.pt")) == ["epoch002.pt"]
    monkeypatch.undo()
    resumed = _train(cfg)["heads"][0]
    assert resumed["resumed_from_epoch"] == 2
    assert [e["epoch"] for e in resumed["history"]] == [1, 2, 3]
    a, b = (torch.load(h["path"], weights_only=True) for h in (ref, resumed))
    for k, v in a["state_dict"].items():
        assert torch.allclose(v.float(), b["state_dict"][k].float(), atol=1e-6), k
    assert [e["loss"] for e in a["history"]] == pytest.approx([e["loss"] for e in b["history"]], abs=1e-6)
    assert _train(cfg)["heads"][0]["skipped"]


def test_resume_only_from_a_checkpoint_of_the_same_key(ready, monkeypatch):
    cfg, cat = ready(train={"epochs": 3, "variants": ["au_fan"], "folds": [1]})
    _kill_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg)
    monkeypatch.undo()
    csv = Path(cfg.dataset.manifest_file)
    df = pd.read_csv(csv, keep_default_na=False)
    df.loc[20, "AU02"] = 1 - int(df.loc[20, "AU02"])  # a training label of fold 1 changes
    df.to_csv(csv, index=False)
    run_stages(cfg, "manifest")
    again = _train(cfg)["heads"][0]
    assert again["resumed_from_epoch"] == 0 and [e["epoch"] for e in again["history"]] == [1, 2, 3]


def test_forced_unit_trains_from_scratch(ready, monkeypatch):
    cfg, cat = ready(train={"epochs": 3, "variants": ["au_fan"], "folds": [1]})
    _kill_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg)
    monkeypatch.undo()
    forced = _train(cfg, force=True)["heads"][0]
    assert forced["resumed_from_epoch"] == 0 and [e["epoch"] for e in forced["history"]] == [1, 2, 3]


def test_flipped_label_retrains_only_the_folds_that_train_on_it(ready):
    cfg, cat = ready(train={"variants": ["au_fan"]})
    first = _train(cfg)
    csv = Path(cfg.dataset.manifest_file)
    df = pd.read_csv(csv, keep_default_na=False)
    df.loc[0, "AU01"] = 1 - int(df.loc[0, "AU01"])  # subject S0 = test fold 1
    df.to_csv(csv, index=False)
    run_stages(cfg, "manifest", "faces", "features")
    second = _train(cfg)
    assert [h["skipped"] for h in second["heads"]] == [True, False, False]  # folds 1, 2, 3
    assert first["heads"][0]["path"] == second["heads"][0]["path"]


def test_chunk_local_batches_cover_every_sample_once_with_locality():
    shards = np.repeat(np.arange(10), 8)  # 10 shards of 8 samples
    batches = list(chunk_local_batches(shards, 4, 8, np.random.default_rng(0)))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(80))
    spread = np.mean([len(np.unique(shards[b])) for b in batches])
    assert spread <= 3.0  # a fully random order would touch ~3.6 of 10 shards per batch of 4
    first_half = set(shards[np.concatenate(batches[:10])])
    assert len(first_half) < 10  # shards are visited a few at a time, not all at once
    other = np.concatenate(list(chunk_local_batches(shards, 4, 8, np.random.default_rng(1))))
    assert not np.array_equal(flat, other)
    assert all(len(b) >= 2 for b in chunk_local_batches(np.zeros(9, int), 4, 4, np.random.default_rng(0)))


def _shifted(frame: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """frame (C, H, W) moved by (dy, dx) cells, zero filled: out[y, x] = frame[y - dy, x - dx]."""
    c, h, w = frame.shape
    out = torch.zeros(c, h, w)
    for y in range(h):
        for x in range(w):
            if 0 <= y - dy < h and 0 <= x - dx < w:
                out[:, y, x] = frame[:, y - dy, x - dx].float()
    return out


def test_gather_shifted_gathers_casts_and_shifts_each_sample_once():
    frames = (torch.arange(4 * 2 * 5 * 5).reshape(4, 2, 5, 5) + 1).half()  # (U, C, H, W)
    rows = np.array([[10, 12, 14], [12, 14, 16], [16, 16, 16]])  # (B, 3), repeats within a batch
    uniq, index = unique_rows(rows)
    assert uniq.tolist() == [10, 12, 14, 16] and np.array_equal(uniq[index], rows)
    out = gather_shifted(frames, index, 2, np.random.default_rng(3))
    assert out.shape == (3, 3, 2, 5, 5) and out.dtype == torch.float32
    assert all(out[j].is_contiguous(memory_format=torch.channels_last) for j in range(3))
    shifts = set()
    for i in range(3):
        # the shift of slot 0, then the same shift for the sample's other slots
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(out[0, i], _shifted(frames[index[i, 0]], dy, dx))]
        assert found, f"sample {i}: slot 0 is not a shift of its frame"
        dy, dx = found[0]
        shifts.add((dy, dx))
        for j in (1, 2):
            assert torch.equal(out[j, i], _shifted(frames[index[i, j]], dy, dx))
    assert len(shifts) > 1  # samples draw their own shifts
    exact = gather_shifted(frames, index)  # no shift: a plain gather
    for i, j in np.ndindex(*index.shape):
        assert torch.equal(exact[j, i], frames[index[i, j]].float())
    with pytest.raises(ValueError, match="needs rng"):
        gather_shifted(frames, index, 1)
    buf = batch_buffer(3, 5, 2, 5, 5)  # room for 5 samples: filled in place, a view returned
    again = gather_shifted(frames, index, out=buf)
    assert torch.equal(again, exact) and again.data_ptr() == buf.data_ptr()
    assert all(again[j].is_contiguous(memory_format=torch.channels_last) for j in range(3))
    with pytest.raises(ValueError, match="cannot hold"):
        gather_shifted(frames, index, out=batch_buffer(3, 2, 2, 5, 5))


def test_background_loader_order_and_errors():
    with BackgroundLoader(iter([np.array([1]), np.array([2])]), lambda b: int(b[0]) * 10) as ld:
        assert list(ld) == [10, 20]

    def bad(b):
        raise ValueError(f"cannot read batch {b.tolist()}")

    with BackgroundLoader(iter([np.array([7])]), bad) as ld, pytest.raises(ValueError, match="batch"):
        list(ld)
