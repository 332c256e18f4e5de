"""Feature store round trips and the features stage: resume, missing faces, refusals, faults.

Crops are 64x64 (features 768 x 16 x 16) so the random-weight FAN runs in well under a second.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import cv2
import pandas as pd

import stages.features as sf
import stages.features_compute as fc
from conftest import run_stages
from pipeline.errors import MissingArtifact, StaleArtifact
from stages import runner
from store.catalog import Catalog
from store.crops import CropStore
from store.features import (FeatureStore, create_feature_store, done_shards, mark_done,
                            shard_range, write_shard)
from store.features import checked as checked_features

torch.set_num_threads(1)
N = 10
FPS = 4  # frames per shard: shards [0-3], [4-7], [8-9]
NO_FACE = (2, 5, 6)


# -- the store on its own ----------------------------------------------------------------------
def _toy_store(path: Path, codec: str = "blosc-lz4"):
    g = create_feature_store(path, N, channels=8, size=4, frames_per_shard=FPS, codec=codec,
                             attrs={"provenance": {"key": "k1", "random_weights": True}})
    x = np.random.default_rng(0).standard_normal((N, 8, 4, 4)).astype(np.float32) * 10
    valid = np.ones(N, dtype=bool)
    valid[list(NO_FACE)] = False
    for s in range(3):
        a, b = shard_range(s, N, FPS)
        write_shard(g, s, x[a:b], valid[a:b])
        mark_done(g, s, f"key{s}")
    return g, x, valid


@pytest.mark.parametrize("codec", ["blosc-lz4", "blosc-zstd", "zstd", "none"])
def test_reader_returns_what_was_written(tmp_path, codec):
    _, x, valid = _toy_store(tmp_path / "f.zarr", codec)
    fs = FeatureStore(tmp_path / "f.zarr")
    assert fs.n_frames == N and fs.shape == (8, 4, 4) and fs.frames_per_shard == FPS
    assert fs.random_weights and fs.provenance["key"] == "k1"
    np.testing.assert_array_equal(fs.valid, valid)
    expect = x.astype(np.float16).astype(np.float32)
    for rows in ([9, 0, 3, 3, 5], [4, 5, 6], [7], [1, 8, 1], list(range(N))):
        got = fs.read(np.array(rows))
        assert got.dtype == np.float32 and got.shape == (len(rows), 8, 4, 4)
        np.testing.assert_array_equal(got, expect[rows])
        for dtype, want in ((None, np.float16), (np.float32, np.float32)):
            for channels_last in (False, True):
                got = fs.read(np.array(rows), dtype, channels_last)
                assert got.dtype == want and got.shape == (len(rows), 8, 4, 4)
                np.testing.assert_array_equal(got, expect[rows].astype(want))
                layout = torch.channels_last if channels_last else torch.contiguous_format
                assert torch.from_numpy(got).is_contiguous(memory_format=layout)
    assert fs.read(np.array([], dtype=int)).shape == (0, 8, 4, 4)
    with pytest.raises(IndexError, match="out of range"):
        fs.read(np.array([0, N]))
    assert [fs.shard_of(r) for r in (0, 3, 4, 9)] == [0, 0, 1, 2]
    again = pickle.loads(pickle.dumps(fs))
    np.testing.assert_array_equal(again.dask().compute().astype(np.float32), expect)


def test_store_layout_and_done_record(tmp_path):
    g, _, _ = _toy_store(tmp_path / "f.zarr")
    f = g["features"]
    assert f.chunks == (1, 8, 4, 4) and f.shards == (FPS, 8, 4, 4) and str(f.dtype) == "float16"
    assert done_shards(g) == {0: "key0", 1: "key1", 2: "key2"}
    with pytest.raises(ValueError, match=r"shard 1 \(rows 4..7\) needs features of shape"):
        write_shard(g, 1, np.zeros((3, 8, 4, 4)), np.ones(3, bool))
    with pytest.raises(IndexError):
        write_shard(g, 3, np.zeros((1, 8, 4, 4)), np.ones(1, bool))
    with pytest.raises(FileNotFoundError):
        FeatureStore(tmp_path / "nothing.zarr")


# -- the stage, on a real mini pipeline (manifest -> faces -> features) ------------------------------
@pytest.fixture
def built(mini):
    cfg = mini(no_face=NO_FACE, n_subjects=3, n_frames=4)  # 12 rows: shards of 8 -> [0-7], [8-11]
    run_stages(cfg, "manifest", "faces")
    return cfg, Catalog(cfg.store)


def _feature_files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes()
            for p in sorted((path / "features").rglob("*")) if p.is_file()}


def test_stage_computes_features_and_missing_faces(built, monkeypatch):
    cfg, catalog = built
    monkeypatch.setattr(fc, "_BACKBONES", {})  # the per-process cache would skip the load warning
    with pytest.warns(UserWarning, match="untrained"):
        s = run_stages(cfg, "features")
    n = 12
    assert (s["frames"], s["computed"], s["missing"]) == (n, n - len(NO_FACE), len(NO_FACE))
    assert s["complete"] and s["random_weights"] and s["weights_id"] == "random-seed0"
    assert s["bytes_on_disk"] > 0 and 0 < s["ratio_vs_raw"] < 1.2
    assert "random" in sf.format_summary(s).lower()
    fs = FeatureStore(s["path"])
    crops = CropStore(catalog.crops(cfg))
    assert fs.random_weights and fs.provenance["inputs"]["crops"] == crops.provenance["key"]
    assert fs.provenance["identity"]["backbone"] == "fan2"
    assert fs.provenance["identity"]["dtype"] == "float16"
    assert not fs.provenance["artifact"].startswith("/")  # store-relative
    assert not fs.valid[list(NO_FACE)].any() and fs.valid.sum() == n - len(NO_FACE)
    assert not fs.read(np.array(NO_FACE)).any()  # missing-face frames stay zero
    # stored values = the frozen FAN on the crops in [0, 1], within float16 precision
    model, _, _ = fc.backbone(cfg)
    rows = np.flatnonzero(fs.valid)
    x = torch.from_numpy(crops.read(rows)).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        ref = model(x).numpy()
    np.testing.assert_allclose(fs.read(rows), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    again = run_stages(cfg, "features")  # up to date: a second run computes nothing
    assert again["skipped"] and again["computed_this_run"] == 0


def test_kill_and_resume_gives_same_bytes(tmp_path, mini, monkeypatch):
    a = mini(where="a", no_face=NO_FACE, n_subjects=3, n_frames=8)  # 24 rows: 3 shards
    whole = run_stages(a, "manifest", "faces", "features")
    reference = _feature_files(Path(whole["path"]))
    b = mini(where="b", no_face=NO_FACE, n_subjects=3, n_frames=8)
    run_stages(b, "manifest", "faces")
    real_write = sf.write_shard

    def dies_on_shard_1(group, shard, feats, valid):
        if shard == 1:  # the disk fills up half way through writing shard 1
            real_write(group, shard, feats * 0 + 1, valid)  # wrong data on disk, then the fault
            raise OSError(28, "No space left on device")
        real_write(group, shard, feats, valid)

    monkeypatch.setattr(sf, "write_shard", dies_on_shard_1)
    cat = Catalog(b.store)
    s = runner.execute("features", b, cat, progress=False)
    assert len(s["failed"]) == 1 and "no space left on the device" in s["failed"][0]
    out = cat.features(b)
    assert not s["complete"] and list(done_shards(zarr.open_group(str(out), mode="r"))) == [0]
    with pytest.raises(StaleArtifact, match="aunet features"):  # consumers refuse it
        checked_features(b, cat)
    stamp0 = {p: p.stat().st_mtime_ns for p in (out / "features").rglob("*") if p.is_file()}
    monkeypatch.setattr(sf, "write_shard", real_write)
    assert [u.shards for u in sf.plan(b, cat).units] == [(1, 2)]  # resumes at shard 1
    s = run_stages(b, "features")
    assert s["complete"] and _feature_files(out) == reference
    p0 = out / "features" / "c" / "0" / "0" / "0" / "0"  # shard 0's file: never rewritten
    assert p0.stat().st_mtime_ns == stamp0[p0]
    checked_features(b, cat)


def test_changed_image_recomputes_one_shard_and_labels_none(built):
    cfg, catalog = built
    run_stages(cfg, "features")
    csv = Path(cfg.dataset.manifest_file)
    df = pd.read_csv(csv, keep_default_na=False)
    df.loc[0, "AU01"] = 1 - int(df.loc[0, "AU01"])  # a flipped label: features untouched
    df.to_csv(csv, index=False)
    s = run_stages(cfg, "manifest", "faces", "features")
    assert s["computed_this_run"] == 0 and s["skipped"]
    img = Path(cfg.dataset.root) / df.loc[9, "image_path"]  # row 9: shard 1 of 2
    cv2.imwrite(str(img), np.full((64, 64, 3), 99, np.uint8))
    faces = run_stages(cfg, "manifest", "faces")
    assert faces["computed_chunks"] == 1
    plan = sf.plan(cfg, catalog)
    assert [u.shards for u in plan.units] == [(1,)]
    s = run_stages(cfg, "features")
    assert s["computed_this_run"] == 4 - len([r for r in NO_FACE if r >= 8])


def test_stale_features_after_crops_change_are_refused_until_recomputed(built):
    """Crops recomputed with other content: nothing downstream may use the old features, even
    when the features run is killed before any shard is redone."""
    cfg, catalog = built
    run_stages(cfg, "features")
    checked_features(cfg, catalog)
    img = Path(cfg.dataset.root) / "S0" / "001.png"
    cv2.imwrite(str(img), np.full((64, 64, 3), 7, np.uint8))
    run_stages(cfg, "faces")
    plan = sf.plan(cfg, catalog)  # planning writes nothing, and the store is stale
    assert plan.units
    with pytest.raises(StaleArtifact, match="run `aunet features`"):
        checked_features(cfg, catalog)
    run_stages(cfg, "features")
    checked_features(cfg, catalog)


def test_two_faces_configurations_coexist(built):
    cfg, catalog = built
    first = run_stages(cfg, "features")
    other = cfg.model_copy(update={"faces": cfg.faces.model_copy(update={"eye_distance": 0.25})})
    run_stages(other, "faces")
    second = run_stages(other, "features")
    assert first["path"] != second["path"] and Path(first["path"]).exists()
    assert checked_features(cfg, catalog).path == Path(first["path"])
    assert checked_features(other, catalog).path == Path(second["path"])
    weights = cfg.model_copy(update={"features": cfg.features.model_copy(update={"seed": 1})})
    third = run_stages(weights, "features")  # other weights: a third store, the others kept
    assert len({first["path"], second["path"], third["path"]}) == 3


def test_refuses_unfinished_or_missing_crops(built, mini):
    cfg, catalog = built
    g = zarr.open_group(str(catalog.crops(cfg)), mode="r+")
    g["chunk_done"][1] = False
    with pytest.raises(StaleArtifact, match="aunet faces"):
        sf.plan(cfg, catalog)
    cfg2 = mini(where="empty")
    run_stages(cfg2, "manifest")
    with pytest.raises(MissingArtifact, match="aunet faces"):
        sf.plan(cfg2, Catalog(cfg2.store))


def test_half_made_store_is_rebuilt_and_build_debris_removed(built):
    cfg, catalog = built
    out = catalog.features(cfg)
    out.mkdir(parents=True)
    zarr.open_group(str(out), mode="w")  # a group without arrays (an old kill while creating)
    debris = out.parent / ".features.zarr.building-x1"
    debris.mkdir()
    (out.parent / ".features.zarr.provenance.json.abc.tmp").write_text("{")
    s = run_stages(cfg, "features")
    assert s["complete"] and not debris.exists()
    assert not list(out.parent.glob("*.tmp"))


class _BadValueModel(torch.nn.Module):
    """(B, 3, S, S) -> (B, 768, S/4, S/4): `value` where the crop's red is 255, else zeros."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x):
        out = torch.zeros(x.shape[0], 768, x.shape[2] // 4, x.shape[3] // 4)
        out[x[:, 0, 0, 0] == 1.0, 5] = self.value
        return out.contiguous(memory_format=torch.channels_last)  # as the real FAN returns it


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e6, -1e6])
def test_nan_inf_or_float16_overflow_names_rows(value):
    # 1e6 is finite in float32 but Inf once stored as float16: caught after the cast
    pixels = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    pixels[3, 0, 0, 0] = 255  # row 7
    valid = np.ones(4, bool)
    with pytest.raises(ValueError, match=r"rows \[7\]"):
        fc.compute_shard(_BadValueModel(value), pixels, valid, 4, dtype="float16", batch_size=2,
                         device=torch.device("cpu"), src="crops.zarr")
    if abs(value) == 1e6:  # stored as float32 it is an ordinary value
        feats = fc.compute_shard(_BadValueModel(value), pixels, valid, 4, dtype="float32",
                                 batch_size=2, device=torch.device("cpu"), src="crops.zarr")
        assert feats[3, 5].min() == value and feats.dtype == np.float32
