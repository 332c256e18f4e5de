"""A damaged feature store (issue 18): a deleted, truncated or corrupted shard file, or NaN in
stored features, is noticed; `aunet features` recomputes what is gone (bytes as before); train
and evaluate refuse the store naming what to run; a non-finite loss stops a head, unrecorded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import run_stages
from flows.cli import main
from pipeline.errors import InputError, NonFinite, StaleArtifact
from stages import runner
from store.catalog import Catalog
from store.features import FeatureStore, create_feature_store, damaged_shards, write_shard
from store.features import checked as checked_features
from store.features.layout import shard_file

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def built(mini):
    """3 subjects x 12 frames, features in shards of 8: shards [0-7] ... [32-35]."""
    cfg = mini(features={"frames_per_shard": 8, "allow_random_weights": True},
               train={"epochs": 1, "variants": ["au_fan"], "folds": [1]})
    run_stages(cfg, "manifest", "faces", "features")
    cat = Catalog(cfg.store)
    return cfg, cat, Path(cat.features(cfg))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted((root / "features").rglob("*")) if p.is_file()}


def _plan(cfg, cat, **select):
    return runner.plan("features", cfg, cat, select=select or None)


@pytest.mark.parametrize("damage", ["delete", "truncate", "valid"])
def test_missing_or_truncated_shard_refused_then_recomputed(built, damage):
    cfg, cat, root = built
    before = _files(root)
    f = shard_file(root, 1)
    if damage == "delete":
        f.unlink()
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:-100])
    else:
        (root / "valid" / "c" / "1").unlink()  # without it every frame would read as "no face"
    with pytest.raises(StaleArtifact, match=r"damaged: 1 shard\(s\).*shard 1: .*run `aunet features`"):
        checked_features(cfg, cat)
    with pytest.raises(StaleArtifact, match="damaged"):  # train refuses, never reads zeros
        runner.execute("train", cfg, cat, progress=False)
    p = _plan(cfg, cat)
    assert [u.shards for u in p.units] == [(1,)]  # exactly the damaged shard, not "up to date"
    s = run_stages(cfg, "features")
    assert s["complete"] and not s["skipped"]
    assert _files(root) == before  # recomputed to the same bytes
    checked_features(cfg, cat)
    assert not _plan(cfg, cat).units


def test_corrupted_bytes_fail_the_checksum_and_verify_recomputes(built, capsys):
    cfg, cat, root = built
    before = _files(root)
    f = shard_file(root, 2)
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # same size: only the chunk's crc32c sees it
    f.write_bytes(bytes(raw))
    store = checked_features(cfg, cat)  # the cheap check (sizes) passes ...
    with pytest.raises(StaleArtifact, match=r"shard 2\) fails its checksum.*aunet features --verify"):
        store.read(np.arange(16, 24))  # ... but no read hands out the damaged frames
    assert not _plan(cfg, cat).units
    assert [u.shards for u in _plan(cfg, cat, verify=True).units] == [(2,)]
    config = Path(cfg.dataset.root).parent / "mini.yaml"
    assert main(["features", "--config", str(config), "--verify", "--quiet"]) == 0
    assert _files(root) == before


def test_nan_in_stored_features_refused_and_verify_recomputes(built):
    cfg, cat, root = built
    before = _files(root)
    g = zarr.open_group(str(root), mode="r+")
    frame = np.asarray(g["features"][9])
    frame[3, 2, 1] = np.nan
    g["features"][9] = frame  # written past the store's writer, checksum and all
    g["shard_bytes"][1] = shard_file(root, 1).stat().st_size
    store = checked_features(cfg, cat)
    with pytest.raises(StaleArtifact, match=r"rows \[9\] hold NaN/Inf.*--verify"):
        store.read(np.array([0, 9]))
    assert [u.shards for u in _plan(cfg, cat, verify=True).units] == [(1,)]
    assert 1 in damaged_shards(g, deep=True) and "NaN" in damaged_shards(g, deep=True)[1]
    run_stages(cfg, "features", select={"verify": True})
    assert _files(root) == before


def test_force_recomputes_every_shard(built):
    cfg, cat, root = built
    before = _files(root)
    s = runner.execute("features", cfg, cat, force=True, progress=False)
    assert s["computed_this_run"] == s["computed"] == 36 and _files(root) == before


def test_writer_refuses_nan_before_writing(tmp_path):
    g = create_feature_store(tmp_path / "f.zarr", 4, channels=2, size=2, frames_per_shard=2,
                             attrs={"provenance": {}})
    x = np.ones((2, 2, 2, 2), np.float32)
    x[1, 0, 0, 0] = np.inf
    with pytest.raises(InputError, match=r"NaN/Inf in features for rows \[3\] \(shard 1\)"):
        write_shard(g, 1, x, np.ones(2, bool))
    assert not shard_file(tmp_path / "f.zarr", 1).exists()


def test_non_finite_loss_stops_the_head_unrecorded(make_feature_store):
    from pipeline.config import TrainConfig, Variant
    from pipeline.learning.training import fit
    from pipeline.models.heads import build_head

    store = make_feature_store(np.random.default_rng(0).normal(size=(8, 768, 16, 16)), 4)
    model = build_head(Variant.AU_FAN, 3)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    saved = []
    y = np.random.default_rng(1).integers(0, 2, (8, 3)).astype(np.float32)
    with pytest.raises(NonFinite, match=r"epoch 1 step 1: the training loss is nan"):
        fit(model, store, np.arange(8)[:, None], y, torch.ones(3),
            TrainConfig(epochs=2, batch_size=4), None, lambda e, s: saved.append(e),
            progress=False)
    assert saved == []  # no epoch recorded
