"""Which feature store a config asks for, and whether it is complete and current.

A shard's key covers its rows' crop digests, the features identity and the code of the per-frame
computation (`CODE_ENTRY`); consumers open a store only through `checked`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from pipeline.config import RunConfig
from pipeline.errors import MissingArtifact, StaleArtifact
from store import crops as crop_store
from store import location
from store.catalog import Catalog
from store.codekey import code_key
from store.features.layout import (damaged_shards, done_shards, is_complete_layout, n_shards_for,
                                   shard_range)
from store.features.reader import FeatureStore
from store.identity import features_identity
from store.provenance import fingerprint

CODE_ENTRY = "stages.features_compute"  # the per-frame computation: part of every shard key


def shard_keys(digests: np.ndarray, frames_per_shard: int, common: dict) -> list[str]:
    """The key of every shard: its rows' crop digests (uint64 (N,)) and the common identity."""
    n = len(digests)
    base = fingerprint(common)
    return [fingerprint([base, np.asarray(digests[a:b], np.uint64).tobytes().hex()])
            for a, b in (shard_range(s, n, frames_per_shard)
                         for s in range(n_shards_for(n, frames_per_shard)))]


def expected_keys(cfg: RunConfig, catalog: Catalog, dataset: str | None = None) -> list[str]:
    """The shard keys this config gives for `dataset` (default: the config's), from its crop
    store's row digests (read-only); for a mixed run, its members' keys end to end."""
    from store import mix

    if mix.is_mix(cfg) and dataset in (None, cfg.dataset.name):
        return [k for m in mix.members(cfg) for k in expected_keys(m, Catalog(m.store))]
    crops_path = catalog.crops(cfg, dataset)
    if not crop_store.is_complete_layout(crops_path) or \
            not crop_store.CropStore(crops_path).chunk_done.all():
        raise StaleArtifact(f"crop store {crops_path} is missing or unfinished; run `aunet faces` "
                            "first")
    digests = crop_store.CropStore(crops_path).array("digest")
    common = {"identity": features_identity(cfg), "code": code_key(CODE_ENTRY)}
    return shard_keys(digests, cfg.features.frames_per_shard, common)


def checked(cfg: RunConfig, catalog: Catalog, dataset: str | None = None) -> "FeatureStore":
    """The feature store this config asks for, verified complete and current (else raises);
    for a mixed run, its members' stores read as one (store.mix.MixedFeatureStore)."""
    from store import manifests, mix

    if mix.is_mix(cfg) and dataset in (None, cfg.dataset.name):
        ms = mix.members(cfg)
        stores = [checked(m, Catalog(m.store)) for m in ms]
        t = manifests.load(catalog, cfg.dataset.name, [mix.MEMBER, mix.MEMBER_ROW]).to_pandas()
        index = t[mix.MEMBER].map({m.dataset.name: i for i, m in enumerate(ms)}).to_numpy()
        return mix.MixedFeatureStore(stores, index, t[mix.MEMBER_ROW].to_numpy())
    path = catalog.features(cfg, dataset)
    verify(path, expected_keys(cfg, catalog, dataset))
    return FeatureStore(path)


def store_key(keys: list[str]) -> str:
    return fingerprint(list(keys))


def complete_with(group: zarr.Group, keys: list[str]) -> bool:
    """Every shard done with exactly these keys."""
    done = done_shards(group)
    return len(done) == len(keys) and all(done.get(i) == k for i, k in enumerate(keys))


def verify(path: str | Path, keys: list[str]) -> dict:
    """The provenance of a complete feature store made from exactly `keys` (one per shard);
    MissingArtifact or StaleArtifact (saying what to run) otherwise."""
    path = location.as_path(path)
    if not path.exists():
        raise MissingArtifact(f"no feature store at {path}; run `aunet features` first")
    if not is_complete_layout(path):
        raise StaleArtifact(f"{path} is not a complete feature store; run `aunet features`")
    g = location.open_group(path, "r")
    rec = dict(g.attrs.get("provenance") or {})
    if rec.get("key") != store_key(keys) or not complete_with(g, keys):
        n_done = len(done_shards(g))
        raise StaleArtifact(f"feature store {path} is incomplete ({n_done} of {len(keys)} shards "
                            "done) or was computed from other crops, weights or code than this "
                            "config's; run `aunet features` first")
    bad = damaged_shards(g)
    if bad:
        raise StaleArtifact(f"feature store {path} is damaged: {damage_summary(bad)}; run "
                            "`aunet features` to recompute what is gone")
    return rec


def damage_summary(bad: dict[int, str], shown: int = 3) -> str:
    """One line for damaged_shards' answer: the count and the first few."""
    first = "; ".join(f"shard {s}: {why}" for s, why in sorted(bad.items())[:shown])
    return f"{len(bad)} shard(s) missing or damaged ({first}{'; ...' if len(bad) > shown else ''})"


