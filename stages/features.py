"""Stage 2: run the frozen FAN once per aligned crop and cache its features in a Zarr store.

Input: the crop store this config asks for (`catalog.crops(cfg)`), checked complete and current.
Output: `catalog.features(cfg)`, whose identity includes the crop store's, so several faces or
weights configurations coexist. A unit is a contiguous range of shards; a shard's key covers its
rows' crop digests, the features identity and the per-frame code (`store.features`), so a
resumed run skips done shards with the same key and recomputes exactly the shards whose inputs
changed. The per-frame computation lives in `stages.features_compute`.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np

from pipeline.config import RunConfig
from pipeline.errors import StaleArtifact
from pipeline.models.fan import FEATURE_CHANNELS, FEATURE_STRIDE, weights_identity
from stages.contract import Plan, UnitResult
from stages.features_compute import backbone, compute_shard, device_for
from store import crops as crop_store
from store import location
from store import mix
from store.catalog import Catalog
from store.codekey import code_key
from store.features import (CODE_ENTRY, FeatureStore, complete_with, create_feature_store,
                            damaged_shards, done_shards, expected_keys, is_complete_layout,
                            mark_done, shard_range, store_key, write_shard)
from store.identity import features_identity
from store.provenance import RANDOM_WEIGHTS_BANNER, record

STAGE = "features"
SHARDS_PER_UNIT = 4  # a unit's work: 4 x 32 frames; small enough to spread, big enough to amortise


@dataclass(frozen=True)
class FeaturesUnit:
    crops_path: str
    out_path: str
    shards: tuple[int, ...]  # contiguous shard indices
    keys: tuple[str, ...]  # each shard's key: a done shard with its key is never rewritten
    weights: str  # the weights identity planned with
    frames: int  # rows in these shards

    @property
    def name(self) -> str:
        return f"shards{self.shards[0]}-{self.shards[-1]}"

    @property
    def size(self) -> int:
        return self.frames

    def __str__(self) -> str:
        return self.name


def reads(cfg: RunConfig) -> list[tuple[str, str]]:
    return [(cfg.dataset.name, "faces")]


def plan(cfg: RunConfig, catalog: Catalog, *, force: bool = False, select=None) -> Plan:
    """Shards missing or made from other inputs, in units. Read-only."""
    if mix.is_mix(cfg):  # a mixed run reads its members' feature stores as they are
        return Plan([], [], {"mix": [m.dataset.name for m in mix.members(cfg)]})
    crops_path = catalog.crops(cfg)
    crop_rec = crop_store.verify(crops_path, crop_store.expected_keys(cfg, catalog))
    keys = expected_keys(cfg, catalog)
    out = catalog.features(cfg)
    n = crop_store.CropStore(crops_path).n_frames
    fps = cfg.features.frames_per_shard
    done, damaged = {}, {}
    if is_complete_layout(out):
        g = location.open_group(out, "r")
        if g["features"].shape[0] == n:
            done = done_shards(g)
            # a done shard whose file is gone or damaged is done no more
            damaged = damaged_shards(g, deep=bool((select or {}).get("verify")))
            done = {s: k for s, k in done.items() if s not in damaged}
    todo = [s for s in range(len(keys)) if force or done.get(s) != keys[s]]
    groups, run_ = [], []
    for s in todo:  # contiguous runs of at most SHARDS_PER_UNIT shards
        if run_ and (s != run_[-1] + 1 or len(run_) == SHARDS_PER_UNIT):
            groups.append(run_)
            run_ = []
        run_.append(s)
    if run_:
        groups.append(run_)
    wid = weights_identity(cfg.features)
    units = [FeaturesUnit(str(crops_path), str(out), tuple(g), tuple(keys[s] for s in g), wid,
                          sum(np.subtract(*shard_range(s, n, fps)[::-1]) for s in g))
             for g in groups]
    skipped = [f"shard{s}" for s in range(len(keys)) if s not in set(todo)]
    return Plan(units, skipped, {"path": str(out), "keys": keys, "frames": n, "redo": sorted(todo) if force else sorted(damaged),
                                 "crops": str(crops_path), "crop_key": crop_rec["key"]})


def prepare(cfg: RunConfig, catalog: Catalog, plan: Plan) -> None:
    """Create the store (whole, atomically) unless one of this identity and size exists."""
    out, n = location.as_path(plan.context["path"]), plan.context["frames"]
    if is_complete_layout(out) and location.open_group(out, "r")["features"].shape[0] == n:
        g = location.open_group(out, "r+")
        for s in plan.context["redo"]:  # damaged (or --force): done no more, so recomputed
            g["shard_done"][s] = False
        return
    crops = location.open_group(plan.context["crops"], "r")
    size = crops["crops"].shape[1] // FEATURE_STRIDE
    f = cfg.features
    create_feature_store(out, n, channels=FEATURE_CHANNELS, size=size, dtype=f.dtype.value,
                         frames_per_shard=f.frames_per_shard, codec=f.codec,
                         attrs={"provenance": {},
                                "random_weights": weights_identity(f).startswith("random")})


def run_unit(cfg: RunConfig, catalog: Catalog, unit: FeaturesUnit, progress=None) -> dict:
    t0 = time.perf_counter()
    model, weights_id, _ = backbone(cfg)
    if weights_id != unit.weights:
        raise StaleArtifact(f"backbone weights changed since planning ({weights_id} != "
                         f"{unit.weights}); plan again")
    device = device_for(cfg)
    model = model.to(device)
    crops = location.open_group(unit.crops_path, "r")
    g = location.open_group(unit.out_path, "r+")
    n_frames, fps = g["features"].shape[0], int(g.attrs["frames_per_shard"])
    done = done_shards(g)
    computed = written = 0
    pending: Optional[Future] = None

    def _store(shard: int, key: str, feats: np.ndarray, valid: np.ndarray, quant) -> None:
        write_shard(g, shard, feats, valid, *(quant or ()))
        mark_done(g, shard, key)  # only after the data is on disk

    # One writer thread: compressing shard k overlaps computing shard k+1; at most one write in
    # flight, so two shard buffers suffice: shard k+2 reuses k's once k is written.
    dtype = str(g["features"].dtype)
    buffers = [np.zeros((fps, *g["features"].shape[1:]), dtype=dtype)
               for _ in range(min(2, len(unit.shards)))]
    # the unit's crops in one read: a crop chunk (64 frames by default) spans several feature
    # shards, and reading shard by shard decoded it once per shard
    first = shard_range(unit.shards[0], n_frames, fps)[0]
    last = shard_range(unit.shards[-1], n_frames, fps)[1]
    pixels = crops["crops"][first:last]  # (n, S, S, 3) uint8
    success = np.asarray(crops["success"][first:last], dtype=bool)  # (n,)
    with ThreadPoolExecutor(max_workers=1) as pool:
        for shard, key in zip(unit.shards, unit.keys):
            start, stop = shard_range(shard, n_frames, fps)
            if done.get(shard) == key:
                if progress:
                    progress(stop - start)
                continue  # resume: never rewrite a finished shard
            valid = success[start - first:stop - first]
            # uint8: each shard's own (scale, offset) (n, C), small enough to allocate per shard
            quant = tuple(np.zeros((stop - start, g["features"].shape[1]), np.float32)
                          for _ in range(2)) if dtype == "uint8" else None
            feats = compute_shard(model, pixels[start - first:stop - first], valid, start,
                                  dtype=dtype, batch_size=cfg.features.batch_size, device=device,
                                  src=unit.crops_path, on_batch=progress,
                                  buffer=buffers[written % len(buffers)], quant=quant)
            if progress:
                progress(int((~valid).sum()))  # rows without a face are not computed
            if pending is not None:
                pending.result()
            pending = pool.submit(_store, shard, key, feats, valid, quant)
            computed += int(valid.sum())
            written += 1
        if pending is not None:
            pending.result()
    return {"shards": written, "computed": computed, "seconds": time.perf_counter() - t0}


def _dir_bytes(path) -> int:
    return location.tree_bytes(path)


def finish(cfg: RunConfig, catalog: Catalog, plan: Plan, results: list[UnitResult]) -> dict:
    """Record the store's key once every shard holds its expected key; summarise."""
    if "mix" in plan.context:
        return {"mix": plan.context["mix"]}
    out = location.as_path(plan.context["path"])
    keys = plan.context["keys"]
    if not is_complete_layout(out):
        return {"path": str(out), "frames": plan.context["frames"], "complete": False,
                "shards_done": 0, "shards": len(keys), "computed_this_run": 0, "skipped": False,
                "random_weights": cfg.features.allow_random_weights}
    g = location.open_group(out, "r+")
    complete = complete_with(g, keys)
    rec = {}
    if complete:
        rec = record(stage=STAGE, name=catalog.rel(out), identity=features_identity(cfg),
                     inputs={"crops": plan.context["crop_key"]}, code=code_key(CODE_ENTRY),
                     extra={"random_weights": bool(g.attrs.get("random_weights", False))})
        rec["key"] = store_key(keys)  # consumers check this against the config's shard keys
    if (g.attrs.get("provenance") or {}).get("key") != rec.get("key"):  # skipped reruns: no write
        g.attrs["provenance"] = rec
    store = FeatureStore(out)
    ok = [r for r in results if r.ok]
    seconds = sum(r.data["seconds"] for r in ok)
    computed_now = sum(r.data["computed"] for r in ok)
    feat_bytes = sum(_dir_bytes(out / a) for a in ("features", "scale", "offset") if (out / a).exists())
    c, h, w = store.shape
    raw = c * h * w * store.stored_dtype.itemsize
    n_valid = int(store.valid.sum())
    return {
        "path": str(out), "frames": store.n_frames, "computed": n_valid,
        "missing": store.n_frames - n_valid, "computed_this_run": computed_now,
        "skipped": not results, "shards_done": len(done_shards(g)), "shards": len(keys),
        "complete": complete, "seconds": round(seconds, 2),
        "frames_per_s": round(computed_now / seconds, 3) if seconds > 0 else None,
        "bytes_on_disk": _dir_bytes(out), "bytes_per_frame": feat_bytes / max(store.n_frames, 1),
        "raw_bytes_per_frame": raw, "ratio_vs_raw": round(feat_bytes / (raw * store.n_frames), 4),
        "random_weights": store.random_weights, "weights_id": weights_identity(cfg.features),
        "backbone": cfg.features.backbone.value,
    }


def format_summary(s: dict) -> str:
    if "mix" in s:
        return (f"features: a mixed run uses its members' feature stores ({', '.join(s['mix'])}); "
                "run each member's pipeline to make them")
    if "bytes_on_disk" not in s:
        return f"features: nothing written to {s['path']} (INCOMPLETE: run again)"
    lines = [
        f"features: {s['frames']} frames, {s['computed']} computed, {s['missing']} missing "
        f"(no face); {s['shards_done']}/{s['shards']} shards done"
        + ("" if s["complete"] else " (INCOMPLETE: run again to resume)"),
        f"  this run: {s['computed_this_run']} frames in {s['seconds']} s"
        + (f" = {s['frames_per_s']} frames/s" if s.get("frames_per_s") else "")
        + (" (up to date: skipped)" if s["skipped"] else ""),
        f"  on disk: {s['bytes_on_disk'] / 1e6:.1f} MB, {s['bytes_per_frame'] / 1e6:.2f} MB per "
        f"frame = {s['ratio_vs_raw']:.3f} x raw {s['raw_bytes_per_frame'] / 1e6:.2f} MB",
        f"  store: {s['path']}",
    ]
    if s.get("random_weights"):
        lines.insert(0, RANDOM_WEIGHTS_BANNER)
    return "\n".join(lines)
