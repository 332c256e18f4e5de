"""`features.dtype: uint8` (issue 19): per frame, per channel quantisation end to end: the codes'
error bound, the reader's dequantisation (both layouts, dask), the features stage, training on
the cache, and live prediction giving a uint8-trained head the same values as its cache.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from conftest import run_stages
from pipeline.config import FeatureDtype, Variant
from pipeline.predict.bundle import BundleSpec, semantic_digest
from pipeline.predict.engine import Engine
from pipeline.quantise import LEVELS, quantise, roundtrip
from store.catalog import Catalog
from store.crops import CropStore
from store.features import FeatureStore, create_feature_store, mark_done, shard_range, write_shard
from store.features import checked as checked_features

pytestmark = pytest.mark.usefixtures("one_thread")


def _x(n=10, c=8, s=4, seed=0) -> np.ndarray:
    """Channels of very different ranges (x1 ... x1000), as the FAN's are."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, c, s, s)) * np.logspace(0, 3, c)[None, :, None, None]
            + rng.normal(0, 5, (1, c, 1, 1))).astype(np.float32)


def test_quantise_error_is_half_a_step_per_frame_and_channel():
    x = torch.from_numpy(_x())
    x[3, 2] = 7.5  # a constant channel: exact
    q, scale, offset = quantise(x)
    assert q.dtype == torch.uint8 and scale.shape == offset.shape == (10, 8)
    err = (roundtrip(x) - x).abs().flatten(2).amax(2)  # (N, C)
    assert torch.all(err <= scale / 2 * (1 + 1e-4) + 1e-6)
    assert err[3, 2] == 0 and scale[3, 2] == 0
    span = x.flatten(2).amax(2) - x.flatten(2).amin(2)
    torch.testing.assert_close(scale, span / LEVELS)
    top = q.flatten(2).amax(2)
    top[3, 2] = LEVELS
    assert top.min() == LEVELS and q[3, 2].max() == 0  # the full code range is used


def test_uint8_store_reads_the_dequantised_values(tmp_path):
    x = _x()
    g = create_feature_store(tmp_path / "q.zarr", 10, channels=8, size=4, dtype="uint8",
                             frames_per_shard=4, attrs={"provenance": {}})
    for s in range(3):
        a, b = shard_range(s, 10, 4)
        write_shard(g, s, x[a:b], np.ones(b - a, bool))
        mark_done(g, s, f"k{s}")
    fs = FeatureStore(tmp_path / "q.zarr")
    assert fs.stored_dtype == np.uint8 and fs.dtype == np.float16
    want = roundtrip(torch.from_numpy(x)).numpy()
    rows = np.array([9, 0, 3, 3, 5, 4])
    for dtype, out in ((None, np.float16), (np.float32, np.float32)):
        for channels_last in (False, True):
            got = fs.read(rows, dtype, channels_last)
            assert got.dtype == out and got.shape == (6, 8, 4, 4)
            np.testing.assert_array_equal(got, want[rows].astype(out))
    np.testing.assert_array_equal(fs.dask().compute(), want.astype(np.float16))
    # what a uint8 cache costs against float16: a quarter of the feature bytes plus the scales
    assert g["features"].nbytes == x.size


def test_features_stage_uint8_trains_and_matches_live_prediction(mini, monkeypatch):
    cfg = mini(n_subjects=3, n_frames=4, features={"dtype": "uint8"},
               train={"epochs": 1, "variants": ["au_fan"], "folds": [1]})
    f16 = cfg.model_copy(update={"features": cfg.features.model_copy(
        update={"dtype": FeatureDtype.FLOAT16})})
    run_stages(cfg, "manifest", "faces", "features")
    cat = Catalog(cfg.store)
    assert cat.features(cfg) != cat.features(f16)  # its own identity and store
    fs = checked_features(cfg, cat)
    assert fs.stored_dtype == np.uint8
    import stages.features_compute as fc

    model, _, _ = fc.backbone(cfg)
    crops = CropStore(cat.crops(cfg)).read(np.arange(fs.n_frames))  # (N, S, S, 3)
    with torch.inference_mode():
        feats = model(torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255)
    np.testing.assert_allclose(fs.read(np.arange(fs.n_frames)), roundtrip(feats).half().float(),
                               rtol=0, atol=1e-3 * float(feats.abs().max()))
    # live prediction: a bundle of a uint8-trained head quantises its features the same way
    engine = object.__new__(Engine)
    engine.onnx_fan, engine.device = None, torch.device("cpu")
    engine.fan_outputs = lambda x: (model(x), torch.zeros(len(x), 1))  # (features, heatmaps)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    spec = dict(name="t", variant=Variant.AU_FAN, aus=["AU01"], thresholds={"AU01": 0.5},
                head_sha256="0" * 64)
    engine.spec = BundleSpec(**spec, feature_dtype=FeatureDtype.UINT8)
    np.testing.assert_array_equal(engine._fan_batch(x)[0].numpy(),
                                  fs.read(np.arange(fs.n_frames), dtype=None))  # float16 both
    engine.spec = BundleSpec(**spec)
    np.testing.assert_array_equal(engine._fan_batch(x)[0].numpy(), feats.half().numpy())
    s = run_stages(cfg, "train")
    assert s["heads"] and all(np.isfinite(h["history"][-1]["loss"]) for h in s["heads"])


def test_old_bundles_keep_their_digest():
    spec = BundleSpec(name="t", variant=Variant.AU_FAN, aus=["AU01"], thresholds={"AU01": 0.5},
                      head_sha256="0" * 64)
    old = json.loads(spec.model_dump_json(exclude={"provenance", "spec_digest", "feature_dtype"}))
    assert semantic_digest(spec) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    assert semantic_digest(spec.model_copy(update={"feature_dtype": FeatureDtype.UINT8})) != \
        semantic_digest(spec)
