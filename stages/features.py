"""Stage 2: run the frozen FAN once per aligned crop and cache its features in a Zarr store.

Input: the crop store of the faces stage (catalog.crops(dataset, cfg.section("faces"))), read
directly with zarr: `crops` uint8 (N, S, S, 3), `success` bool (N,), attrs `provenance.key`.
Output: catalog.features(dataset, backbone, weights_id), written through store.features.

A unit is a contiguous range of shards. `plan` creates (or validates and reuses) the store, so
that units in several processes only ever write their own shards; a shard is marked done only
after its data is written, and a resumed run skips done shards made from the same key.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from pipeline.config import RunConfig
from pipeline.models.fan import FEATURE_CHANNELS, FEATURE_STRIDE, FrozenFAN, load_backbone
from store.catalog import Catalog
from store.features import (FeatureStore, create_feature_store, done_shards, mark_done,
                            n_shards_for, shard_range, summarise_shard_keys, write_shard)
from store.provenance import RANDOM_WEIGHTS_BANNER, code_version, fingerprint, write_provenance

STAGE = "features"
CODE_MODULES = ("stages.features", "pipeline.models.fan", "store.features")
SHARDS_PER_UNIT = 4  # a unit's work: 4 x 32 frames; small enough to spread, big enough to amortise
RAW_FLOAT16_BYTES = FEATURE_CHANNELS * 64 * 64 * 2  # 6.29 MB per 256x256 frame
PIXEL_SCALE = 255.0  # uint8 crops -> [0, 1]; the FAN takes no mean/std normalisation


@dataclass(frozen=True)
class FeaturesUnit:
    dataset: str
    crops_path: str
    out_path: str
    shards: tuple[int, ...]  # contiguous shard indices
    key: str  # the store's provenance key: a done shard with this key is never rewritten
    crop_key: str
    weights_id: str


# -- backbone, once per process ---------------------------------------------------------------
_BACKBONES: dict[str, tuple[FrozenFAN, str, dict]] = {}


def _weights_cache_key(cfg: RunConfig) -> str:
    f = cfg.features
    stamp = None
    if f.weights is not None and Path(f.weights).is_file():
        st = Path(f.weights).stat()
        stamp = (st.st_size, st.st_mtime_ns)  # a replaced file is re-read and re-hashed
    return json.dumps([f.backbone.value, str(f.weights), stamp, f.allow_download,
                       f.allow_random_weights, f.seed])


def backbone(cfg: RunConfig) -> tuple[FrozenFAN, str, dict]:
    """(model, weights_id, info), loaded once per process and reused by every unit."""
    k = _weights_cache_key(cfg)
    if k not in _BACKBONES:
        _BACKBONES.clear()  # one backbone per worker: never hold two 12M-parameter models
        _BACKBONES[k] = load_backbone(cfg.features)
    return _BACKBONES[k]


def device_for(cfg: RunConfig) -> torch.device:
    if cfg.features.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.features.device)


# -- inputs and provenance --------------------------------------------------------------------
def crops_path(cfg: RunConfig, catalog: Catalog) -> Path:
    return catalog.crops(cfg.dataset.name, cfg.section("faces"))


def open_crops(path: Path) -> tuple[zarr.Group, str]:
    """The crop store and its provenance key; refuses a missing or unfinished store."""
    if not (Path(path) / "zarr.json").exists():
        raise FileNotFoundError(f"no crop store at {path}; run `aunet faces` first")
    g = zarr.open_group(str(path), mode="r")
    for name in ("crops", "success"):
        if name not in g:
            raise ValueError(f"{path} is not a crop store: array '{name}' is missing")
    key = (g.attrs.get("provenance") or {}).get("key")
    if not key:
        raise ValueError(f"crop store {path} has no provenance key (attrs provenance.key)")
    if "chunk_done" in g:
        todo = np.flatnonzero(~np.asarray(g["chunk_done"][:], dtype=bool))
        if todo.size:
            raise ValueError(f"crop store {path} is unfinished: chunks {todo[:10].tolist()} "
                             f"({todo.size} in all) are not done; finish `aunet faces` first")
    shape = g["crops"].shape
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or shape[1] % FEATURE_STRIDE:
        raise ValueError(f"crop store {path}: crops must be (N, S, S, 3) with S a multiple of "
                         f"{FEATURE_STRIDE}, got {shape}")
    return g, str(key)


def _params(cfg: RunConfig, weights_id: str, random_weights: bool, crop_size: int) -> dict:
    # batch_size and device change speed, not the stored values' meaning: not part of the key
    f = cfg.features
    return {"backbone": f.backbone.value, "weights_id": weights_id, "dtype": f.dtype,
            "frames_per_shard": f.frames_per_shard, "codec": f.codec,
            "random_weights": random_weights, "crop_size": crop_size}


def _layout_mismatch(g: zarr.Group, n: int, size: int, cfg: RunConfig) -> list[str]:
    f = g["features"]
    want = {"features shape": (n, FEATURE_CHANNELS, size, size), "dtype": cfg.features.dtype,
            "frames_per_shard": cfg.features.frames_per_shard, "codec": cfg.features.codec}
    have = {"features shape": tuple(f.shape), "dtype": str(f.dtype),
            "frames_per_shard": g.attrs.get("frames_per_shard"), "codec": g.attrs.get("codec")}
    return [f"{k}: store {have[k]}, config {want[k]}" for k in want if have[k] != want[k]]


def prepare_store(cfg: RunConfig, catalog: Catalog, *, force: bool = False) -> tuple[Path, dict]:
    """Create the feature store, or validate an existing one for resuming; returns (path, record)."""
    src = crops_path(cfg, catalog)
    crops, crop_key = open_crops(src)
    n, size = crops["crops"].shape[0], crops["crops"].shape[1] // FEATURE_STRIDE
    _, weights_id, info = backbone(cfg)
    if info["random_weights"]:
        print(RANDOM_WEIGHTS_BANNER)
    out = catalog.features(cfg.dataset.name, cfg.features.backbone.value, weights_id)
    params = _params(cfg, weights_id, info["random_weights"], crops["crops"].shape[1])
    extra = {"backbone": params["backbone"], "weights_sha256": weights_id if info["source"] != "random" else None,
             "weights_info": info, "dtype": cfg.features.dtype, "crop_store": str(src),
             "crop_store_key": crop_key, "random_weights": info["random_weights"], "n_frames": n}
    code = code_version(*CODE_MODULES)
    inputs = {"crops": crop_key, "weights": weights_id}
    if (out / "zarr.json").exists() and not force:
        g = zarr.open_group(str(out), mode="r+")
        old = g.attrs.get("provenance") or {}
        old_src = old.get("crop_store")
        if old_src is not None and Path(old_src) != Path(src):
            raise ValueError(
                f"feature store {out} was computed from the crop store {old_src}, but this "
                f"config's faces settings give {src} (another faces configuration); rerun with "
                f"--force to recompute the features from it")
        # the same crop store recomputed (new key): its shards are recomputed below, like a
        # code change, because every shard key covers the crop store key
        bad = _layout_mismatch(g, n, size, cfg)
        if bad:
            raise ValueError(f"feature store {out} has another layout ({'; '.join(bad)}); "
                             f"rerun with --force to rebuild it")
        if old.get("key") == fingerprint({"config": params, "code": code, "inputs": inputs}):
            return out, old
        # code or crops changed: shards made with the old key are recomputed, the store is kept
        record = write_provenance(out, stage=STAGE, config=params, code=code, inputs=inputs,
                                  extra=extra)
        g.attrs["provenance"] = record
        return out, record
    record = write_provenance(out, stage=STAGE, config=params, code=code, inputs=inputs, extra=extra)
    create_feature_store(out, n, channels=FEATURE_CHANNELS, size=size, dtype=cfg.features.dtype,
                         frames_per_shard=cfg.features.frames_per_shard, codec=cfg.features.codec,
                         attrs={"provenance": record, "random_weights": info["random_weights"]})
    return out, record


# -- the stage contract -----------------------------------------------------------------------
def plan(cfg: RunConfig, catalog: Catalog, *, force: bool = False) -> list[FeaturesUnit]:
    out, record = prepare_store(cfg, catalog, force=force)
    g = zarr.open_group(str(out), mode="r")
    n_shards = n_shards_for(g["features"].shape[0], cfg.features.frames_per_shard)
    done = done_shards(g)
    todo = [s for s in range(n_shards) if done.get(s) != record["key"]]
    units, run_ = [], []
    for s in todo:  # contiguous runs of at most SHARDS_PER_UNIT shards
        if run_ and (s != run_[-1] + 1 or len(run_) == SHARDS_PER_UNIT):
            units.append(run_)
            run_ = []
        run_.append(s)
    if run_:
        units.append(run_)
    return [FeaturesUnit(cfg.dataset.name, record["crop_store"], str(out), tuple(u),
                         record["key"], record["crop_store_key"], record["inputs"]["weights"])
            for u in units]


def _check_finite(stored: torch.Tensor, rows: np.ndarray, src: str) -> None:
    """Fail naming the rows if the features as stored (after the cast) hold NaN or Inf.

    stored: (B, C, H, W) in the store's dtype, so a float32 value beyond float16's range (which
    the cast turns into Inf) is caught too. amax and amin propagate NaN and see +-Inf: two
    reductions (~0.5 ms per frame) instead of an elementwise mask (~4 ms), which is built only
    on failure to name the rows.
    """
    if torch.isfinite(stored.amax()) and torch.isfinite(stored.amin()):
        return
    ok = torch.isfinite(stored).flatten(1).all(dim=1).cpu().numpy()  # (B,)
    raise ValueError(f"NaN/Inf (or beyond the store dtype's range) in FAN features of crop "
                     f"store {src} rows {rows[~ok].tolist()}; nothing of this shard was "
                     f"written")


def compute_shard(model: FrozenFAN, pixels: np.ndarray, valid: np.ndarray, first_row: int, *,
                  dtype: str, batch_size: int, device: torch.device, src: str,
                  on_batch: Optional[Callable[[int], None]] = None,
                  buffer: Optional[np.ndarray] = None) -> np.ndarray:
    """Features (n, 768, s, s) of crops pixels (n, S, S, 3) uint8; rows with valid False are zero.

    first_row: the crop store row of pixels[0], for error messages. buffer: optional
    (>= n, 768, s, s) array of `dtype` to fill and return a view of, so that a caller reusing
    buffers spares the page faults of a fresh 200 MB allocation per shard.
    """
    valid = np.asarray(valid, dtype=bool)  # (n,)
    size = pixels.shape[1] // FEATURE_STRIDE
    shape = (len(pixels), FEATURE_CHANNELS, size, size)  # (n, C, s, s)
    if buffer is None:
        out = np.zeros(shape, dtype=dtype)
    else:
        if buffer.dtype != np.dtype(dtype) or buffer.shape[0] < shape[0] or buffer.shape[1:] != shape[1:]:
            raise ValueError(f"buffer {buffer.dtype}{buffer.shape} cannot hold {dtype}{shape}")
        out = buffer[:shape[0]]
        out[~valid] = 0  # rows without a face: the rest is overwritten below
    out_t = torch.from_numpy(out)  # the same memory
    todo = np.flatnonzero(valid)
    cuda = device.type == "cuda"
    tdtype = getattr(torch, dtype)
    with torch.inference_mode():
        for i in range(0, todo.size, batch_size):
            idx = todo[i:i + batch_size]
            # a run of consecutive rows (the usual case) is a view: no fancy-index copies
            sel = slice(int(idx[0]), int(idx[-1]) + 1) if idx[-1] - idx[0] + 1 == idx.size else idx
            x = torch.from_numpy(np.ascontiguousarray(pixels[sel]))  # (B, S, S, 3) uint8
            if cuda:
                x = x.pin_memory().to(device, non_blocking=True)
            # NHWC -> NCHW view is already channels-last in memory
            x = x.permute(0, 3, 1, 2).float().div_(PIXEL_SCALE)  # (B, 3, S, S)
            with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                feats = model(x)  # (B, 768, s, s)
            if cuda:  # cast on the device, then one contiguous device-to-host copy
                feats = feats.to(tdtype, memory_format=torch.contiguous_format)
            if isinstance(sel, slice):
                # CPU: one pass casts to the stored dtype and turns the channels-last output
                # into (C, H, W) rows, straight into the shard buffer (a cast, then a numpy
                # copy, was two passes, ~7 ms per frame)
                dst = out_t[sel]  # (B, C, s, s) view
                dst.copy_(feats)
            else:
                dst = feats.to("cpu", tdtype)
                out_t[torch.from_numpy(idx)] = dst
            _check_finite(dst, first_row + idx, src)
            if on_batch is not None:
                on_batch(idx.size)
    return out


def run_unit(cfg: RunConfig, catalog: Catalog, unit: FeaturesUnit, *,
             on_batch: Optional[Callable[[int], None]] = None) -> dict:
    t0 = time.perf_counter()
    crops, crop_key = open_crops(Path(unit.crops_path))
    if crop_key != unit.crop_key:
        raise ValueError(f"crop store {unit.crops_path} changed since planning (key {crop_key}, "
                         f"planned {unit.crop_key}); plan again")
    model, weights_id, _ = backbone(cfg)
    if weights_id != unit.weights_id:
        raise ValueError(f"backbone weights changed since planning ({weights_id} != "
                         f"{unit.weights_id}); plan again")
    device = device_for(cfg)
    model = model.to(device)
    g = zarr.open_group(unit.out_path, mode="r+")
    n_frames, fps = g["features"].shape[0], int(g.attrs["frames_per_shard"])
    done = done_shards(g)
    computed = written = 0
    pending: Optional[Future] = None

    def _store(shard: int, feats: np.ndarray, valid: np.ndarray) -> None:
        write_shard(g, shard, feats, valid)
        mark_done(g, shard, unit.key)  # only after the data is on disk

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
        for shard in unit.shards:
            if done.get(shard) == unit.key:
                continue  # resume: never rewrite a finished shard
            start, stop = shard_range(shard, n_frames, fps)
            valid = success[start - first:stop - first]
            feats = compute_shard(model, pixels[start - first:stop - first], valid, start, dtype=dtype,
                                         batch_size=cfg.features.batch_size, device=device,
                                         src=unit.crops_path, on_batch=on_batch,
                                         buffer=buffers[written % len(buffers)])
            if pending is not None:
                pending.result()
            pending = pool.submit(_store, shard, feats, valid)
            computed += int(valid.sum())
            written += 1
        if pending is not None:
            pending.result()
    return {"shards": written, "computed": computed, "seconds": time.perf_counter() - t0}


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def finish(cfg: RunConfig, catalog: Catalog, results: list[dict]) -> dict:
    _, weights_id, info = backbone(cfg)
    out = catalog.features(cfg.dataset.name, cfg.features.backbone.value, weights_id)
    store = FeatureStore(out)
    g = zarr.open_group(str(out), mode="r+")
    summarise_shard_keys(g)
    n_shards = g["shard_done"].shape[0]
    n_done = int(np.asarray(g["shard_done"][:]).sum())
    seconds = sum(r["seconds"] for r in results)
    computed_now = sum(r["computed"] for r in results)
    feat_bytes = _dir_bytes(out / "features")
    c, h, w = store.shape
    raw = c * h * w * store.dtype.itemsize
    n_valid = int(store.valid.sum())
    return {
        "path": str(out), "frames": store.n_frames, "computed": n_valid,
        "missing": store.n_frames - n_valid, "computed_this_run": computed_now,
        "skipped": not results, "shards_done": n_done, "shards": n_shards,
        "complete": n_done == n_shards, "seconds": round(seconds, 2),
        "frames_per_s": round(computed_now / seconds, 3) if seconds > 0 else None,
        "bytes_on_disk": _dir_bytes(out), "bytes_per_frame": feat_bytes / max(store.n_frames, 1),
        "raw_bytes_per_frame": raw, "ratio_vs_raw": round(feat_bytes / (raw * store.n_frames), 4),
        "random_weights": info["random_weights"], "weights_id": weights_id,
        "backbone": cfg.features.backbone.value,
    }


def _unit_frames(unit: FeaturesUnit, n_frames: int, fps: int) -> int:
    return sum(min((s + 1) * fps, n_frames) - s * fps for s in unit.shards)


def run(cfg: RunConfig, catalog: Catalog, *, force: bool = False, progress: bool = True,
        client=None) -> dict:
    with catalog.lock(cfg.dataset.name, STAGE):
        t0 = time.perf_counter()
        units = plan(cfg, catalog, force=force)
        n_frames = zarr.open_group(units[0].out_path, mode="r")["features"].shape[0] if units else 0
        fps = cfg.features.frames_per_shard
        total = sum(_unit_frames(u, n_frames, fps) for u in units)
        with tqdm(total=total, desc="features", unit="frame", disable=not progress) as bar:
            if client is None:
                results = []
                for u in units:
                    before = bar.n
                    results.append(run_unit(cfg, catalog, u, on_batch=bar.update))
                    # rows without a face are not computed: move the bar past them too
                    bar.update(_unit_frames(u, n_frames, fps) - (bar.n - before))
            else:
                from distributed import as_completed

                futures = client.map(run_unit, [cfg] * len(units), [catalog] * len(units), units,
                                     pure=False)
                results = []
                for fut in as_completed(futures):
                    results.append(fut.result())
                    unit = units[futures.index(fut)]
                    bar.update(_unit_frames(unit, n_frames, fps))
        summary = finish(cfg, catalog, results)
        wall = time.perf_counter() - t0
        summary["wall_s"] = round(wall, 2)
        if summary["computed_this_run"]:
            summary["frames_per_s_wall"] = round(summary["computed_this_run"] / wall, 3)
        return summary


def format_summary(s: dict) -> str:
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
