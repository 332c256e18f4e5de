"""Benchmark the features stage: extraction throughput vs a bare FAN loop, and codecs.

    .venv/bin/python benchmarks/bench_features.py [--frames 8] [--repeats 3] [--batch-size 8] [--threads 2]

1. Throughput: the whole stage (crop store read, FAN, NaN check, float16, compression, shard
   writes, completion records) against a bare loop of FAN forwards on the same frames, batch
   size and threads, in one run. Target: ratio >= 0.9.
2. Codecs and dtypes (float16, float32, uint8: pipeline.quantise): bytes per frame on disk
   (uint8: codes plus scale and offset) vs raw float16 (6.29 MB at 768x64x64), write and read
   MB/s (of raw float16 bytes), the reader's frames/s as training reads (float16, channels
   last), and the precision lost vs the float32 features: max relative error (values above
   float16's smallest normal) and max error / the frame's channel range.
Uses the randomly initialised backbone (no pretrained weights on this machine): timings are
those of the real network; compression ratios of trained features differ (see docs/features.md).
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import cv2
import pandas as pd
import zarr

from pipeline.faces.align import template
from pipeline.config import DatasetConfig, FacesConfig, FeaturesConfig, RunConfig
from stages import runner
from stages.features_compute import backbone
from store.catalog import Catalog
from store.crops import CropStore
from store.features import FeatureStore, create_feature_store, shard_range, write_shard

CROP = 256
RAW_F16 = 768 * 64 * 64 * 2
FLOAT16_TINY = 6.1e-5  # smallest normal float16: relative error is measured above it
READ_BATCH = 8  # frames per reader call in the frames/s column (a training batch's distinct rows)


def make_config(root: Path, frames_per_shard: int, batch_size: int, codec: str) -> RunConfig:
    return RunConfig(
        dataset=DatasetConfig(name="bench", layout="manifest", root=root / "data", au_set="bp4d",
                              folds="column", manifest_file=root / "data" / "m.csv"),
        store=root / "store", faces=FacesConfig(detector="provided"),
        features=FeaturesConfig(allow_random_weights=True, frames_per_shard=frames_per_shard,
                                batch_size=batch_size, device="cpu", codec=codec))


def write_crops(cfg: RunConfig, catalog: Catalog, n: int) -> np.ndarray:
    """A finished crop store of smooth face-sized images (not noise: FAN sees structure), made
    by the real manifest and faces stages from images whose landmarks are the crop template."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:CROP, 0:CROP] / CROP
    root = Path(cfg.dataset.root)
    root.mkdir(parents=True, exist_ok=True)
    points = " ".join(f"{v:.3f}" for v in template(CROP, cfg.faces.eye_distance).ravel())
    rows = []
    for i in range(n):
        f = rng.uniform(2, 8, 3)
        img = np.stack([np.sin(f[c] * xx + f[(c + 1) % 3] * yy + i) for c in range(3)], -1)
        cv2.imwrite(str(root / f"{i:05d}.png"), ((img + 1) * 127.5).astype(np.uint8))
        rows.append({"subject": "s", "fold": 1, "frame": i, "image_path": f"{i:05d}.png",
                     "landmarks": points})
    pd.DataFrame(rows).to_csv(cfg.dataset.manifest_file, index=False)
    for stage in ("manifest", "faces"):
        runner.execute(stage, cfg, catalog, progress=False)
    return CropStore(catalog.crops(cfg)).read(np.arange(n))


def bare_loop(model, pix: np.ndarray, batch_size: int) -> float:
    """Seconds for plain FAN forwards over the frames (uint8 -> [0, 1] floats, no I/O)."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(pix), batch_size):
            x = torch.from_numpy(pix[i:i + batch_size]).permute(0, 3, 1, 2).float().div_(255)
            model(x)
    return time.perf_counter() - t0


def throughput(args, root: Path) -> np.ndarray:
    cfg = make_config(root, args.frames_per_shard, args.batch_size, args.codec)
    catalog = Catalog(cfg.store)
    pix = write_crops(cfg, catalog, args.frames)
    model, _, _ = backbone(cfg)
    bare_loop(model, pix[:args.batch_size], args.batch_size)  # warm-up: first-call allocations
    # interleaved repeats, best of each: the CPU is shared, and the minimum is the least
    # disturbed measurement of either side
    bares, stages = [], []
    for rep in range(args.repeats):
        bares.append(bare_loop(model, pix, args.batch_size))
        t0 = time.perf_counter()
        s = runner.execute("features", cfg, catalog, force=True, progress=False)  # every shard
        stages.append(time.perf_counter() - t0)
    bare, stage = min(bares), min(stages)
    n = args.frames
    print(f"\n== extraction throughput: {n} frames {CROP}x{CROP}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} torch threads, {args.frames_per_shard} frames/shard, codec {args.codec}")
    print(f"bare FAN loop : {n / bare:8.3f} frames/s (the machine's FAN rate) (best of {[round(b, 2) for b in bares]} s)")
    print(f"features stage: {n / stage:8.3f} frames/s (best of {[round(t, 2) for t in stages]} s, "
          f"incl. plan, crop reads, checks, compression, writes)")
    print(f"ratio stage/bare = {bare / stage:.3f} (target >= 0.9)")
    print(f"store: {s['bytes_per_frame'] / 1e6:.2f} MB/frame = {s['ratio_vs_raw']:.3f} x raw")
    with torch.inference_mode():  # float32 reference features for the codec table
        x = torch.from_numpy(pix[:args.codec_frames]).permute(0, 3, 1, 2).float().div_(255)
        return model(x).numpy()  # (F, 768, 64, 64)


def codecs(feats32: np.ndarray, root: Path, fps: int) -> None:
    n = len(feats32)
    print(f"\n== codecs: {n} frames of 768x64x64 random-weight FAN features, one frame per inner "
          f"chunk, {fps} frames per shard")
    print(f"{'codec':<11}{'dtype':<9}{'MB/frame':>9}{'x raw f16':>10}{'write MB/s':>11}"
          f"{'read MB/s':>10}{'reader fr/s':>12}{'max rel err':>12}{'err/range':>10}")
    big = np.abs(feats32) > FLOAT16_TINY
    flat = feats32.reshape(n, feats32.shape[1], -1)
    span = (flat.max(2) - flat.min(2))[:, :, None, None]  # (n, C, 1, 1) each channel's range
    span = np.where(span > 0, span, 1)
    for codec in ("blosc-lz4", "blosc-zstd", "zstd", "none"):
        for dtype in (("float16", "float32", "uint8") if codec == "blosc-lz4" else
                      ("float16", "uint8")):
            path = root / f"{codec}-{dtype}.zarr"
            g = create_feature_store(path, n, dtype=dtype, frames_per_shard=fps, codec=codec,
                                     attrs={"provenance": {}})
            t0 = time.perf_counter()
            for s in range(-(-n // fps)):
                a, b = shard_range(s, n, fps)
                write_shard(g, s, feats32[a:b], np.ones(b - a, bool))
            tw = time.perf_counter() - t0
            on_disk = sum(p.stat().st_size for a in ("features", "scale", "offset")
                          for p in (path / a).rglob("*") if p.is_file())
            fs = FeatureStore(path)
            t0 = time.perf_counter()
            back = fs.read(np.arange(n))
            tr = time.perf_counter() - t0
            t0 = time.perf_counter()
            for a in range(0, n, READ_BATCH):  # as the training loader reads
                fs.read(np.arange(a, min(a + READ_BATCH, n)), dtype=None, channels_last=True)
            fr = n / (time.perf_counter() - t0)
            raw = n * RAW_F16 * (2 if dtype == "float32" else 1)
            err = np.abs(back - feats32)
            rel = (err[big] / np.abs(feats32)[big]).max()
            print(f"{codec:<11}{dtype:<9}{on_disk / n / 1e6:9.3f}{on_disk / (n * RAW_F16):10.3f}"
                  f"{raw / tw / 1e6:11.0f}{raw / tr / 1e6:10.0f}{fr:12.1f}{rel:12.2e}"
                  f"{(err / span).max():10.2e}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames-per-shard", type=int, default=8)
    p.add_argument("--codec-frames", type=int, default=8)
    p.add_argument("--codec", default="blosc-lz4", help="the feature store codec of the throughput run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)  # the random-weights warning, once is enough
    with tempfile.TemporaryDirectory() as tmp:
        feats = throughput(args, Path(tmp))
        codecs(feats, Path(tmp) / "codecs", args.frames_per_shard)


if __name__ == "__main__":
    main()
