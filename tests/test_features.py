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

import stages.features as sf
from pipeline.config import DatasetConfig, FacesConfig, FeaturesConfig, RunConfig
from store.catalog import Catalog
from store.features import (FeatureStore, create_feature_store, done_shards, mark_done,
                            shard_range, write_shard)

torch.set_num_threads(1)
CROP = 64  # test crop side: features are CROP / 4 = 16
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


# -- the stage ---------------------------------------------------------------------------------
def _cfg(root: Path, **features) -> RunConfig:
    feats = dict(allow_random_weights=True, frames_per_shard=FPS, batch_size=3, device="cpu")
    feats.update(features)
    return RunConfig(dataset=DatasetConfig(name="t", layout="demo", root=root / "data",
                                           au_set="bp4d"),
                     store=root / "store", faces=FacesConfig(detector="provided"),
                     features=FeaturesConfig(**feats))


def _write_crops(cfg: RunConfig, catalog: Catalog, key: str = "crop-key-1") -> np.ndarray:
    """A finished crop store in the documented layout (docs/architecture.md)."""
    path = sf.crops_path(cfg, catalog)
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    pix = np.random.default_rng(7).integers(0, 256, (N, CROP, CROP, 3), dtype=np.uint8)
    success = np.ones(N, dtype=bool)
    success[list(NO_FACE)] = False
    pix[~success] = 0
    g.create_array("crops", data=pix, chunks=(3, CROP, CROP, 3))
    g.create_array("success", data=success)
    g.create_array("chunk_done", data=np.ones(4, dtype=bool))
    g.attrs["provenance"] = {"key": key}
    return pix


@pytest.fixture
def setup(tmp_path):
    cfg = _cfg(tmp_path)
    catalog = Catalog(cfg.store)
    pix = _write_crops(cfg, catalog)
    return cfg, catalog, pix


def _feature_files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes()
            for p in sorted((path / "features").rglob("*")) if p.is_file()}


def test_stage_computes_features_and_missing_faces(setup, monkeypatch):
    cfg, catalog, pix = setup
    monkeypatch.setattr(sf, "_BACKBONES", {})  # the per-process cache would skip the load warning
    with pytest.warns(UserWarning, match="untrained"):
        s = sf.run(cfg, catalog, progress=False)
    assert (s["frames"], s["computed"], s["missing"]) == (N, N - len(NO_FACE), len(NO_FACE))
    assert s["complete"] and s["random_weights"] and s["weights_id"] == "random-seed0"
    assert s["bytes_on_disk"] > 0 and 0 < s["ratio_vs_raw"] < 1.2
    assert "random" in sf.format_summary(s).lower()
    fs = FeatureStore(s["path"])
    assert fs.random_weights and fs.provenance["crop_store_key"] == "crop-key-1"
    assert fs.provenance["backbone"] == "fan2" and fs.provenance["dtype"] == "float16"
    assert not fs.valid[list(NO_FACE)].any() and fs.valid.sum() == N - len(NO_FACE)
    # missing-face frames are never computed: they stay zero
    assert not fs.read(np.array(NO_FACE)).any()
    # stored values = the frozen FAN on the crops in [0, 1], within float16 precision
    model, _, _ = sf.backbone(cfg)
    rows = np.flatnonzero(fs.valid)
    x = torch.from_numpy(pix[rows]).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        ref = model(x).numpy()
    np.testing.assert_allclose(fs.read(rows), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    # up to date: a second run computes nothing
    again = sf.run(cfg, catalog, progress=False)
    assert again["skipped"] and again["computed_this_run"] == 0


def test_kill_and_resume_gives_same_bytes(tmp_path, setup, monkeypatch):
    cfg, catalog, _ = setup
    whole = sf.run(cfg, catalog, progress=False)
    reference = _feature_files(Path(whole["path"]))

    cfg2 = _cfg(tmp_path / "second")
    cat2 = Catalog(cfg2.store)
    _write_crops(cfg2, cat2)
    real_write = sf.write_shard

    def dies_on_shard_1(group, shard, feats, valid):
        if shard == 1:  # the disk fills up half way through writing shard 1
            real_write(group, shard, feats * 0 + 1, valid)  # wrong data on disk, then the fault
            raise OSError(28, "No space left on device")
        real_write(group, shard, feats, valid)

    monkeypatch.setattr(sf, "write_shard", dies_on_shard_1)
    with pytest.raises(OSError, match="No space"):
        sf.run(cfg2, cat2, progress=False)
    out = Path(whole["path"].replace(str(cfg.store), str(cfg2.store)))
    done = done_shards(zarr.open_group(str(out), mode="r"))
    assert list(done) == [0]  # shard 1 was not marked done
    stamp0 = {p: p.stat().st_mtime_ns for p in (out / "features").rglob("*") if p.is_file()}

    monkeypatch.setattr(sf, "write_shard", real_write)
    units = sf.plan(cfg2, cat2)
    assert [u.shards for u in units] == [(1, 2)]  # resumes at the first unfinished shard
    s = sf.run(cfg2, cat2, progress=False)
    assert s["complete"] and s["computed_this_run"] == 2 + 2  # shard 1: rows 5, 6 have no face
    assert _feature_files(out) == reference
    # the finished shard 0 was never rewritten
    p0 = out / "features" / "c" / "0" / "0" / "0" / "0"  # shard 0's file (chunk key c/0/0/0/0)
    assert p0.stat().st_mtime_ns == stamp0[p0]


def test_recomputed_crops_recompute_features(setup):
    """The same crop store recomputed (new key): every shard is redone, no --force needed."""
    cfg, catalog, _ = setup
    sf.run(cfg, catalog, progress=False)
    _write_crops(cfg, catalog, key="crop-key-2")
    s = sf.run(cfg, catalog, progress=False)
    assert s["computed_this_run"] == N - len(NO_FACE)
    assert FeatureStore(s["path"]).provenance["crop_store_key"] == "crop-key-2"


def test_refuses_crop_store_from_other_configuration(setup):
    cfg, catalog, _ = setup
    sf.run(cfg, catalog, progress=False)
    other = cfg.model_copy(update={"faces": cfg.faces.model_copy(update={"eye_distance": 0.25})})
    _write_crops(other, catalog, key="crop-key-2")
    with pytest.raises(ValueError, match="another faces configuration"):
        sf.run(other, catalog, progress=False)
    s = sf.run(other, catalog, force=True, progress=False)
    assert FeatureStore(s["path"]).provenance["crop_store_key"] == "crop-key-2"


def test_refuses_unfinished_or_missing_crops(tmp_path, setup):
    cfg, catalog, _ = setup
    g = zarr.open_group(str(sf.crops_path(cfg, catalog)), mode="r+")
    g["chunk_done"][2] = False
    with pytest.raises(ValueError, match=r"unfinished: chunks \[2\]"):
        sf.run(cfg, catalog, progress=False)
    cfg2 = _cfg(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="aunet faces"):
        sf.run(cfg2, Catalog(cfg2.store), progress=False)


def test_refuses_layout_change_without_force(setup):
    cfg, catalog, _ = setup
    sf.run(cfg, catalog, progress=False)
    cfg2 = cfg.model_copy(update={"features": cfg.features.model_copy(update={"frames_per_shard": 5})})
    with pytest.raises(ValueError, match="frames_per_shard: store 4, config 5"):
        sf.run(cfg2, catalog, progress=False)


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
def test_nan_inf_or_float16_overflow_names_rows(setup, value):
    # 1e6 is finite in float32 but Inf once stored as float16: caught after the cast
    cfg, catalog, pix = setup
    g = zarr.open_group(str(sf.crops_path(cfg, catalog)), mode="r+")
    bad = pix[4:8].copy()
    bad[3, 0, 0, 0] = 255  # row 7
    g["crops"][4:8] = bad
    pixels, valid = g["crops"][4:8], g["success"][4:8]
    with pytest.raises(ValueError, match=r"rows \[7\]"):
        sf.compute_shard(_BadValueModel(value), pixels, valid, 4, dtype="float16", batch_size=2,
                         device=torch.device("cpu"), src="crops.zarr")
    if abs(value) == 1e6:  # stored as float32 it is an ordinary value
        feats = sf.compute_shard(_BadValueModel(value), pixels, valid, 4, dtype="float32",
                                 batch_size=2, device=torch.device("cpu"), src="crops.zarr")
        assert feats[3, 5].min() == value and feats.dtype == np.float32
