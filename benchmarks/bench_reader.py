"""Benchmark the training reader: random frames and (t-T, t, t+T) triplets per second, memory.

    .venv/bin/python benchmarks/bench_reader.py [--small 48] [--large 192] [--batch 8]

Builds two full-size feature stores (768x64x64 float16, blosc-lz4, 32 frames per shard) of
`--small` and `--large` frames, then measures FeatureStore.read:
  - random frames: batches of `--batch` random rows;
  - triplets: batches of `--batch` (t-T, t, t+T) row triplets, T = 10 (3 x batch frames);
  - peak traced memory (tracemalloc) of the same reads and of a dask statistic on both stores:
    flat with dataset size when the two peaks match.
Next to them: one training step (forward + backward) of the AUNet head on the same batch, when
pipeline.models.heads is present, so it is clear which side bounds training.
The frames are FAN-like: one real (random-weight) FAN feature map, rolled by a different spatial
shift per frame, so each chunk compresses like a real frame and no two frames are equal.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import torch

from pipeline.config import FeaturesConfig
from pipeline.models.fan import load_backbone
from store.features import FeatureStore, create_feature_store, shard_range, write_shard

T = 10  # temporal offset of the triplets (the paper's T)
FPS = 32  # frames per shard: the default
N_BATCHES = 12


def base_frame() -> np.ndarray:
    warnings.simplefilter("ignore", UserWarning)
    model, _, _ = load_backbone(FeaturesConfig(allow_random_weights=True))
    yy, xx = np.mgrid[0:256, 0:256] / 256
    img = np.stack([np.sin(5 * xx + 3 * yy), np.cos(4 * yy), np.sin(7 * xx)], 0)
    with torch.inference_mode():
        return model(torch.from_numpy(img[None]).float().add(1).div(2)).numpy()[0]  # (768, 64, 64)


def build(path: Path, n: int, base: np.ndarray) -> FeatureStore:
    g = create_feature_store(path, n, frames_per_shard=FPS, attrs={"provenance": {}})
    for s in range(-(-n // FPS)):
        a, b = shard_range(s, n, FPS)
        block = np.stack([np.roll(base, (r % 17, r // 17 % 13), axis=(1, 2)) for r in range(a, b)])
        write_shard(g, s, block, np.ones(b - a, dtype=bool))
    return FeatureStore(path)


def random_batches(n: int, batch: int, rng) -> list[np.ndarray]:
    return [rng.integers(0, n, batch) for _ in range(N_BATCHES)]


def triplet_batches(n: int, batch: int, rng) -> list[np.ndarray]:
    out = []
    for _ in range(N_BATCHES):
        t = rng.integers(0, n, batch)
        # where t-T or t+T falls outside the video, the middle frame stands in (the reference's rule)
        prev = np.where(t - T >= 0, t - T, t)
        nxt = np.where(t + T < n, t + T, t)
        out.append(np.concatenate([prev, t, nxt]))  # (3B,)
    return out


def timed_reads(fs: FeatureStore, batches: list[np.ndarray]) -> tuple[float, float]:
    """(frames/s, peak traced MB) of reading the batches."""
    tracemalloc.start()
    t0 = time.perf_counter()
    for rows in batches:
        fs.read(rows)
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return sum(len(b) for b in batches) / dt, peak


def dask_peak(fs: FeatureStore) -> tuple[float, float]:
    """(seconds, peak traced MB) of a per-channel mean over the whole store with dask."""
    import dask

    tracemalloc.start()
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2):
        fs.dask()[:, :, ::8, ::8].mean(axis=(0, 2, 3), dtype=np.float32).compute()
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return dt, peak


def head_step(batch: int) -> str:
    try:
        from pipeline.config import Variant
        from pipeline.models.heads import build_head
    except ImportError as e:
        return f"head not available ({e})"
    head = build_head(Variant.AUNET, 12).to(memory_format=torch.channels_last)  # as in training
    opt = torch.optim.AdamW(head.parameters(), lr=1e-4)
    f = [torch.randn(batch, 768, 64, 64).contiguous(memory_format=torch.channels_last)
         for _ in range(3)]
    y = torch.randint(0, 2, (batch, 12)).float()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(f[1], f[0], f[2]), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    best = min(times[1:])  # the first step pays one-off allocations
    return f"{batch / best:8.1f} triplets/s (AUNet head, forward + backward, batch {batch}, CPU)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", type=int, default=48)
    p.add_argument("--large", type=int, default=192)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    base = base_frame()
    with tempfile.TemporaryDirectory() as tmp:
        stores = {n: build(Path(tmp) / f"s{n}.zarr", n, base) for n in (args.small, args.large)}
        print(f"\n== FeatureStore.read: 768x64x64 float16 blosc-lz4, {FPS} frames/shard, "
              f"batches of {args.batch}, {N_BATCHES} batches each")
        print(f"{'frames in store':>16}{'random f/s':>12}{'peak MB':>9}{'triplet f/s':>13}"
              f"{'triplets/s':>11}{'peak MB':>9}{'dask s':>8}{'dask peak MB':>13}")
        for n, fs in stores.items():
            rf, rp = timed_reads(fs, random_batches(n, args.batch, rng))
            tf, tp = timed_reads(fs, triplet_batches(n, args.batch, rng))
            ds, dp = dask_peak(fs)
            print(f"{n:>16}{rf:12.1f}{rp:9.0f}{tf:13.1f}{tf / 3:11.1f}{tp:9.0f}{ds:8.2f}{dp:13.0f}")
        print(f"one batch of {args.batch} frames as float32 = {args.batch * 768 * 64 * 64 * 4 / 1e6:.0f} MB")
        print(f"training step: {head_step(args.batch)}")


if __name__ == "__main__":
    main()
