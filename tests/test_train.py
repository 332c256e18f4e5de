"""Head training stage on a tiny real Zarr feature store: checkpoints, skip, kill-and-resume,
prediction, and the batch sampler / background loader it relies on."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import stages.train as train_stage
from pipeline.aus import AUSet
from pipeline.batches import (BackgroundLoader, batch_buffer, chunk_local_batches, gather_shifted,
                              unique_rows)
from pipeline.config import DatasetConfig, Layout, PriorConfig, RunConfig, TrainConfig, Variant
from pipeline.manifest import ManifestReport, finalize
from stages import prior as prior_stage
from stages.heads_io import load_head, predict
from store.catalog import Catalog
from store.features import FeatureStore, create_feature_store, mark_done, write_shard
from store.provenance import is_current, read_provenance, write_provenance, write_table

COLS = AUSet.BP4D.columns
N_PER_SUBJECT, FPS, SIZE = 12, 8, 16


pytestmark = pytest.mark.usefixtures("one_thread")


def make_dataset(root, name="mini", done_shards: int = 99,
                 au_set: AUSet = AUSet.BP4D) -> tuple[Catalog, FeatureStore]:
    """3 subjects (folds 1-3), one 12-frame video each; one frame without a face."""
    rng = np.random.default_rng(0)
    n = 3 * N_PER_SUBJECT
    df = pd.DataFrame({"subject": np.repeat(["S1", "S2", "S3"], N_PER_SUBJECT),
                       "session": "T1", "frame": np.tile(np.arange(N_PER_SUBJECT), 3),
                       "fold": np.repeat([1, 2, 3], N_PER_SUBJECT)})
    y = (rng.random((n, len(au_set.columns))) < 0.4).astype(int)
    for j, c in enumerate(au_set.columns):
        df[c] = pd.array(y[:, j], dtype="Int8")
    df.loc[3, "AU01"] = pd.NA
    cat = Catalog(root / "store")
    table = finalize(df, name, au_set, ManifestReport())
    write_table(cat.manifest(name), table)
    write_provenance(cat.manifest(name), stage="manifest", config={}, code="test", inputs={})
    path = cat.features(name, "fan2", "test")
    group = create_feature_store(path, n, size=SIZE, frames_per_shard=FPS,
                                 attrs={"provenance": {"key": "features-test-key"}})
    x = rng.normal(size=(n, 768, SIZE, SIZE)).astype(np.float16)
    valid = np.ones(n, bool)
    valid[20] = False
    for s in range(-(-n // FPS)):
        write_shard(group, s, x[s * FPS:(s + 1) * FPS], valid[s * FPS:(s + 1) * FPS])
        if s < done_shards:
            mark_done(group, s, "features-test-key")
    return cat, FeatureStore(path)


def make_cfg(root, name="mini", au_set: AUSet = AUSet.BP4D, **train) -> RunConfig:
    t = dict(epochs=2, batch_size=4, max_steps_per_epoch=2, lr=1e-3, shuffle_buffer=8,
             lr_step_epochs=1, temporal_offset=2, variants=(Variant.AU_FAN, Variant.AUNET),
             folds=(1,))
    return RunConfig(dataset=DatasetConfig(name=name, layout=Layout.MANIFEST, root=root,
                                           au_set=au_set),
                     store=root / "store", prior=PriorConfig(epochs=2),
                     train=TrainConfig(**(t | train)))


def test_train_writes_checkpoints_skips_and_predicts(tmp_path):
    cat, store = make_dataset(tmp_path)
    cfg = make_cfg(tmp_path)
    prior_stage.run(cfg, cat, progress=False)
    summary = train_stage.run(cfg, cat, progress=False)
    assert [(h["variant"], h["fold"]) for h in summary["heads"]] == [("au_fan", 1), ("aunet", 1)]
    for h in summary["heads"]:
        assert not h["skipped"] and len(h["history"]) == 2
        assert h["n_train_frames"] == 2 * N_PER_SUBJECT - 1  # folds 2+3, one frame without a face
        final = cat.head_checkpoint("mini", h["variant"], 1, train_stage.head_name(cfg, Variant(h["variant"])))
        assert str(final) == h["path"] and final.exists()
        assert sorted(p.name for p in final.parent.glob("*.pt")) == ["epoch002.pt", "final.pt"]
        rec = read_provenance(final)
        assert rec["inputs"]["features"] == "features-test-key"
        model, meta = load_head(final)
        assert meta["au_columns"] == COLS and meta["epoch"] == 2 and len(meta["history"]) == 2
        rows = np.arange(5)
        trip = np.stack([rows, rows, np.minimum(rows + 1, 4)], 1) if model.temporal else None
        p = predict(model, store, rows, trip, batch_size=2)
        assert p.shape == (5, 12) and p.dtype == np.float32 and ((p >= 0) & (p <= 1)).all()
    aunet = summary["heads"][1]
    assert aunet["triplets"]["boundary"] > 0 and aunet["triplets"]["missing_face"] == 2
    assert "prior_key" in read_provenance(aunet["path"])["inputs"]
    assert train_stage.head_name(cfg, Variant.AU_FAN) == "lr1e-03_e2_b4_cons-paper_g1_shift2_s0_steps2"
    again = train_stage.run(cfg, cat, progress=False, variants=["au_fan"])
    assert [h["skipped"] for h in again["heads"]] == [True]
    assert "loss per epoch" in train_stage.format_summary(again)


def test_incomplete_feature_store_refused(tmp_path):
    cat, _ = make_dataset(tmp_path, done_shards=3)
    with pytest.raises(ValueError, match=r"incomplete: shards \[3, 4\]"):
        train_stage.run(make_cfg(tmp_path, variants=(Variant.AU_FAN,)), cat, progress=False)


def test_disfa_heads_start_from_bp4d_heads(tmp_path):
    """train.init_from: the DISFA head (8 AUs) takes the BP4D head's body; only fc2 is new."""
    cat, _ = make_dataset(tmp_path, "bp4dmini")
    make_dataset(tmp_path, "disfamini", au_set=AUSet.DISFA)
    bp4d = train_stage.run(make_cfg(tmp_path, "bp4dmini", variants=(Variant.AU_TDN,)), cat,
                           progress=False)["heads"][0]
    # lr 0 (and so no weight decay step): the trained DISFA body must equal the BP4D body exactly
    cfg = make_cfg(tmp_path, "disfamini", AUSet.DISFA, variants=(Variant.AU_TDN,), lr=0.0,
                   init_from="bp4dmini")
    disfa = train_stage.run(cfg, cat, progress=False)["heads"][0]
    assert disfa["fresh_params"] == ["classifier.fc2.bias", "classifier.fc2.weight"]
    assert disfa["path"].endswith("_from-bp4dmini/final.pt")
    src, dst = (torch.load(h["path"], weights_only=False)["state_dict"] for h in (bp4d, disfa))
    assert dst["classifier.fc2.weight"].shape == (8, 128) and src["classifier.fc2.weight"].shape == (12, 128)
    for k, v in src.items():
        if "fc2" not in k and "running" not in k and "num_batches" not in k:  # BN statistics move
            assert torch.equal(v, dst[k]), k
    rec = read_provenance(disfa["path"])
    assert rec["inputs"]["init_from"] == bp4d["path"] and rec["inputs"]["init_key"] != "missing"
    with pytest.raises(FileNotFoundError, match="no final au_tdn heads"):
        train_stage.run(make_cfg(tmp_path, "disfamini", AUSet.DISFA, variants=(Variant.AU_TDN,),
                                 init_from="nosuchdata"), cat, progress=False)


def test_predict_checks_triplets(tmp_path):
    cat, store = make_dataset(tmp_path)
    from pipeline.models.heads import build_head

    tdn = build_head(Variant.AU_TDN, 12)
    with pytest.raises(ValueError, match="needs triplets"):
        predict(tdn, store, np.arange(3), None)
    with pytest.raises(ValueError, match=r"triplets\[:, 1\] == rows"):
        predict(tdn, store, np.arange(3), np.zeros((3, 3), np.int64))


def test_kill_and_resume_continues_from_last_epoch(tmp_path, monkeypatch):
    ref_cat, _ = make_dataset(tmp_path / "ref")
    cfg_ref = make_cfg(tmp_path / "ref", epochs=3, variants=(Variant.AU_TDN,))
    ref = train_stage.run(cfg_ref, ref_cat, progress=False)["heads"][0]

    cat, _ = make_dataset(tmp_path / "run")
    cfg = make_cfg(tmp_path / "run", epochs=3, variants=(Variant.AU_TDN,))

    def kill(unit, epoch):
        if epoch == 2:
            raise KeyboardInterrupt("killed after epoch 2")

    monkeypatch.setattr(train_stage, "_epoch_done", kill)
    with pytest.raises(KeyboardInterrupt):
        train_stage.run(cfg, cat, progress=False)
    folder = cat.head_dir("mini", "au_tdn", 1, train_stage.head_name(cfg, Variant.AU_TDN))
    assert sorted(p.name for p in folder.glob("*.pt")) == ["epoch002.pt"]
    monkeypatch.undo()
    resumed = train_stage.run(cfg, cat, progress=False)["heads"][0]
    assert resumed["resumed_from_epoch"] == 2
    assert [e["epoch"] for e in resumed["history"]] == [1, 2, 3]
    a, b = torch.load(ref["path"], weights_only=False), torch.load(resumed["path"], weights_only=False)
    for k, v in a["state_dict"].items():
        assert torch.allclose(v.float(), b["state_dict"][k].float(), atol=1e-6), k
    assert [e["loss"] for e in a["history"]] == pytest.approx([e["loss"] for e in b["history"]], abs=1e-6)
    params = train_stage.train_params(cfg, Variant.AU_TDN)
    assert is_current(resumed["path"], config=params, code=train_stage._code(),
                      inputs=train_stage._inputs(cfg, cat, Variant.AU_TDN, 1))


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
