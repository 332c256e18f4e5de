"""Benchmark: one epoch of AUNet from the feature cache vs end-to-end with the frozen FAN.

    .venv/bin/python benchmarks/bench_train.py [--samples 24] [--batch 8] [--repeats 2]

Same samples, same batches (chunk-local order), same head initialisation, loss (weighted BCE +
paper consistency loss through a frozen random prior encoder), optimiser and feature shift:
  - cache: pipeline.learning.training.fit over a real Zarr feature store (768x64x64 float16, blosc-lz4);
  - end-to-end: what the reference code does, i.e. the frozen 2-stack FAN (random weights) is
    run on the three 256x256 crops of every sample (no grad), then the same head step.
Also: samples/s of the reader alone (what the training loader does: FeatureStore.read of each
batch's frames, then the gather, shift and cast into a channels-last batch) and of the head alone
(features already in memory), to show which side bounds training. Prints the ratios.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.learning.batches import batch_buffer, chunk_local_batches, gather_shifted, read_unique
from pipeline.config import Backbone, ConsistencyForm, TrainConfig, Variant
from pipeline.learning.losses import consistency_loss, weighted_bce
from pipeline.models.fan import FrozenFAN
from pipeline.models.heads import build_head
from pipeline.models.vae import FrozenEncoder, LabelVAE
from pipeline.learning.training import fit
from store.features import FeatureStore, create_feature_store, write_shard

T, N_AUS, FPS, SEED = 10, 12, 32, 0


def make_data(n_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops (F, 3, 256, 256) uint8 of one video, triplets (n, 3), labels (n, 12)."""
    rng = np.random.default_rng(SEED)
    n_frames = n_samples + 2 * T
    yy, xx = np.mgrid[0:256, 0:256] / 256.0
    face = 128 + 80 * np.sin(6 * xx) * np.cos(5 * yy)  # smooth face-like pattern
    crops = np.stack([np.clip(face + rng.normal(0, 20, (3, 256, 256)), 0, 255)
                      for _ in range(n_frames)]).astype(np.uint8)
    mid = np.arange(T, T + n_samples)
    trip = np.stack([mid - T, mid, mid + T], 1).astype(np.int64)
    y = (rng.random((n_samples, N_AUS)) < 0.3).astype(np.float32)
    return crops, trip, y


def fan_features(fan: FrozenFAN, crops: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        x = torch.from_numpy(crops).float().div_(255).contiguous(memory_format=torch.channels_last)
        return fan(x).float()  # (B, 768, 64, 64)


def build_cache(path: Path, fan: FrozenFAN, crops: np.ndarray) -> FeatureStore:
    n = len(crops)
    group = create_feature_store(path, n, frames_per_shard=FPS, attrs={"provenance": {"key": "bench"}})
    for s in range(-(-n // FPS)):
        part = crops[s * FPS:(s + 1) * FPS]
        feats = torch.cat([fan_features(fan, part[i:i + 8]) for i in range(0, len(part), 8)])
        write_shard(group, s, feats.numpy(), np.ones(len(part), bool))
    return FeatureStore(path)


def head_and_encoder() -> tuple[torch.nn.Module, FrozenEncoder]:
    torch.manual_seed(SEED)
    return build_head(Variant.AUNET, N_AUS), FrozenEncoder(LabelVAE(N_AUS, 8))


def end_to_end_epoch(fan, crops, trip, y, cfg: TrainConfig, store_fps: int) -> None:
    """The same epoch as pipeline.learning.training.fit, but features recomputed by the FAN for every sample."""
    model, enc = head_and_encoder()
    model.to(memory_format=torch.channels_last)  # as pipeline.learning.training.fit
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng([SEED, 0, 1])
    shift_rng = np.random.default_rng([SEED, 0, 1, 1])
    weights, labels = torch.ones(N_AUS), torch.from_numpy(y)
    batches = chunk_local_batches(trip[:, 1] // store_fps, cfg.batch_size, cfg.shuffle_buffer, rng)
    model.train()
    buf = None
    for idx in batches:
        b = len(idx)
        feats = fan_features(fan, crops[trip[idx].ravel()])  # (3B, 768, 64, 64) channels last
        if buf is None:  # one reused batch buffer, as pipeline.learning.training.fit
            buf = batch_buffer(3, cfg.batch_size, *feats.shape[1:])
        x = gather_shifted(feats, np.arange(3 * b).reshape(b, 3), cfg.feature_shift, shift_rng, buf)
        logits = model(x[1], x[0], x[2])  # x: (3, B, 768, 64, 64)
        cons, _ = consistency_loss(logits, labels[idx], enc, cfg.consistency)
        loss = weighted_bce(logits, labels[idx], weights) + cfg.consistency_weight * cons
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def load_batch(store: FeatureStore, rows: np.ndarray, shift: int, rng, buf=None) -> torch.Tensor:
    """What pipeline.learning.training.fit does per batch: read each frame once, gather, shift, cast."""
    return gather_shifted(*read_unique(store, rows), shift, rng, buf)


def head_alone(trip, y, store, cfg: TrainConfig) -> float:
    """Samples/s of head training steps on features already in memory."""
    model, enc = head_and_encoder()
    model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    x = load_batch(store, trip[:cfg.batch_size], 0, None)  # (3, B, 768, 64, 64)
    yb = torch.from_numpy(y[:cfg.batch_size])
    n_steps = max(1, len(trip) // cfg.batch_size)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        logits = model(x[1], x[0], x[2])
        loss = weighted_bce(logits, yb, torch.ones(N_AUS)) + consistency_loss(logits, yb, enc)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return n_steps * cfg.batch_size / (time.perf_counter() - t0)


def reader_alone(trip, store, cfg: TrainConfig) -> float:
    """Samples/s of the training reader (read, gather, shift, cast) without the head."""
    rng = np.random.default_rng([SEED, 0, 1])
    batches = list(chunk_local_batches(trip[:, 1] // store.frames_per_shard, cfg.batch_size,
                                       cfg.shuffle_buffer, rng))
    shift_rng = np.random.default_rng([SEED, 0, 1, 1])
    buf = batch_buffer(3, cfg.batch_size, *store.shape)
    t0 = time.perf_counter()
    for idx in batches:
        load_batch(store, trip[idx], cfg.feature_shift, shift_rng, buf)
    return sum(map(len, batches)) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cfg = TrainConfig(epochs=1, batch_size=args.batch, feature_shift=2, shuffle_buffer=2 * args.batch,
                      consistency=ConsistencyForm.PAPER)
    crops, trip, y = make_data(args.samples)
    torch.manual_seed(SEED)
    fan = FrozenFAN(Backbone.FAN2).freeze()  # random weights: the cost is the same as trained ones
    print(f"torch threads {torch.get_num_threads()}, {args.samples} samples, batch {args.batch}, "
          f"{len(crops)} frames (T={T})")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = build_cache(Path(tmp) / "features.zarr", fan, crops)
        t_cache = time.perf_counter() - t0
        print(f"cache build (features stage, once): {t_cache:.1f} s for {len(crops)} frames "
              f"({len(crops) / t_cache:.2f} frames/s)")

        head_alone(trip[:args.batch], y, store, cfg)  # warm-up: first-call allocations, oneDNN setup
        # interleaved repeats, best of each: the CPU is shared, and the minimum is the least
        # disturbed measurement of either side (as benchmarks/bench_features.py)
        cached, e2e = [], []
        for _ in range(args.repeats):
            model, enc = head_and_encoder()
            t0 = time.perf_counter()
            fit(model, store, trip, y, torch.ones(N_AUS), cfg, enc, lambda e, s: None, progress=False)
            cached.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            end_to_end_epoch(fan, crops, trip, y, cfg, store.frames_per_shard)
            e2e.append(time.perf_counter() - t0)
        t_cached, t_e2e = min(cached), min(e2e)
        r_reader = reader_alone(trip, store, cfg)
        r_head = head_alone(trip, y, store, cfg)
    n = args.samples
    print(f"one AUNet epoch from the cache: {t_cached:.2f} s ({n / t_cached:.2f} samples/s; "
          f"best of {[round(t, 2) for t in cached]})")
    print(f"one AUNet epoch end to end (FAN on 3 frames per sample): {t_e2e:.2f} s "
          f"({n / t_e2e:.2f} samples/s; best of {[round(t, 2) for t in e2e]})")
    print(f"RATIO end-to-end / cache: {t_e2e / t_cached:.2f}x (target >= 4x)")
    print(f"reader alone: {r_reader:.2f} samples/s; head alone: {r_head:.2f} samples/s; "
          f"RATIO reader / head: {r_reader / r_head:.2f}x "
          f"({'head' if r_reader > r_head else 'reader'} bounds training)")


if __name__ == "__main__":
    main()
