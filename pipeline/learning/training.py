"""The head training loop on cached features (used by the train stage, tests and benchmarks).

Loss: frequency-weighted masked BCE, plus gamma * L_cons through the fold's frozen prior encoder
for AU-VAE and AUNet. AdamW on the head, StepLR, seeded per epoch so a resumed run continues
exactly as an uninterrupted one. Batches come chunk-local from a background reader thread.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.learning.batches import (BackgroundLoader, batch_buffer, chunk_local_batches, epoch_samples,
                              gather_shifted, read_unique)
from pipeline.config import TrainConfig
from pipeline.errors import NonFinite
from pipeline.learning.losses import consistency_loss, weighted_bce

LOADER_DEPTH = 3  # batches read ahead by the background thread


def fit(model, store, frames: np.ndarray, y: np.ndarray, weights: torch.Tensor, t: TrainConfig,
        encoder, checkpoint, *, resume: dict | None = None, seed_key=(0, 0), progress: bool = True,
        desc: str = "train", groups: np.ndarray | None = None,
        group_shares: np.ndarray | None = None) -> dict:
    """Train `model` on samples frames (n, S) (S = 1 or 3 store rows) with labels y (n, L).

    Epoch e draws its batch order and shifts from a generator seeded by (seed_key, e), so a run
    resumed after epoch e continues exactly as the uninterrupted run would have. `groups` (n,)
    and `group_shares` (G,): the share of each group (a mixed run's datasets) in every epoch's
    samples (pipeline.learning.batches.epoch_samples); without them every sample is used once per epoch.
    """
    model.to(memory_format=torch.channels_last)  # the batches are channels last: 36% faster here
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=t.lr_step_epochs, gamma=t.lr_gamma)
    history, start = _restore(resume, model, opt, sched)
    shards = store.shard_ids(frames[:, frames.shape[1] // 2])  # (n,) shard of the middle frame
    n_batches = -(-len(frames) // t.batch_size)
    steps = min(n_batches, t.max_steps_per_epoch or n_batches)
    labels = torch.from_numpy(y)
    bar = tqdm(total=(t.epochs - start) * steps, desc=desc, disable=not progress)

    def load(idx: np.ndarray):
        # The background thread decodes and transposes to channels last (read_unique: no
        # torch); the gather, shift and cast run in the training thread with torch's own
        # threads: torch ops in a second thread start a second OpenMP team that fights the
        # head's for the cores.
        return (*read_unique(store, frames[idx]), labels[idx])  # frames (U, C, H, W), index, y

    # one batch buffer, refilled every step (after the previous step's backward)
    buf = batch_buffer(frames.shape[1], min(t.batch_size, len(frames)), *store.shape)
    for epoch in range(start + 1, t.epochs + 1):
        rng = np.random.default_rng([*seed_key, epoch])
        shift_rng = np.random.default_rng([*seed_key, epoch, 1])
        batches = itertools.islice(_epoch_batches(shards, t, rng, groups, group_shares), steps)
        model.train()
        sums = {"loss": 0.0, "cls": 0.0, "cons": 0.0}
        n_steps = cons_rows = 0
        with BackgroundLoader(batches, load, LOADER_DEPTH) as loader:
            for stored, index, yb in loader:
                x = gather_shifted(stored, index, t.feature_shift, shift_rng, buf)  # (S, B, C, H, W)
                losses, n = _step(model, x, yb, weights, encoder, t, opt,
                                  where=f"{desc}: epoch {epoch} step {n_steps + 1}")
                for k, v in losses.items():
                    sums[k] += v
                cons_rows += n
                n_steps += 1
                bar.update(1)
                bar.set_postfix_str(f"epoch {epoch} loss {sums['loss'] / n_steps:.4f}")
        sched.step()
        entry = {"epoch": epoch, "steps": n_steps, "lr": opt.param_groups[0]["lr"],
                 **{k: v / max(n_steps, 1) for k, v in sums.items()}, "cons_rows": cons_rows}
        history.append(entry)
        if progress:
            bar.write(f"{desc} epoch {epoch}/{t.epochs}: loss {entry['loss']:.4f} "
                      f"(cls {entry['cls']:.4f}, cons {entry['cons']:.4f})")
        checkpoint(epoch, _state(model, opt, sched, history))
    bar.close()
    return _state(model, opt, sched, history)


def _restore(resume: dict | None, model, opt, sched) -> tuple[list[dict], int]:
    """(history, last epoch done): from an epoch checkpoint, or a fresh start."""
    if resume is None:
        return [], 0
    model.load_state_dict(resume["state_dict"])
    opt.load_state_dict(resume["optimizer"])
    sched.load_state_dict(resume["scheduler"])
    torch.set_rng_state(resume["rng"]["torch"])
    return list(resume["history"]), int(resume["epoch"])


def _epoch_batches(shards: np.ndarray, t: TrainConfig, rng: np.random.Generator,
                   groups: np.ndarray | None, group_shares: np.ndarray | None):
    """One epoch's batches of sample indices, chunk-local (pipeline.learning.batches)."""
    if groups is None:
        return chunk_local_batches(shards, t.batch_size, t.shuffle_buffer, rng)
    # the epoch's samples by dataset share, then the same chunk-local order over them
    chosen = epoch_samples(groups, group_shares, rng)
    return (chosen[b] for b in chunk_local_batches(shards[chosen], t.batch_size,
                                                    t.shuffle_buffer, rng))


def _step(model, x: torch.Tensor, yb: torch.Tensor, weights: torch.Tensor, encoder,
          t: TrainConfig, opt, where: str = "train") -> tuple[dict[str, float], int]:
    """One optimiser step on a batch x (S, B, C, H, W); its losses and the rows the
    consistency term saw. A NaN/Inf loss raises NonFinite before the step (`where` names it)."""
    logits = model(x[1], x[0], x[2]) if x.shape[0] == 3 else model(x[0])  # (B, L)
    cls = weighted_bce(logits, yb, weights)
    loss, cons, n = cls, 0.0, 0
    if encoder is not None:
        c, n = consistency_loss(logits, yb, encoder, t.consistency)
        loss = cls + t.consistency_weight * c
        cons = float(c.detach())
    if not torch.isfinite(loss):  # never step on (or record) a NaN/Inf loss
        raise NonFinite(f"{where}: the training loss is {float(loss)}; nothing of this epoch is "
                        "kept. Lower train.lr, or check the features with `aunet features "
                        "--verify`")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss": float(loss.detach()), "cls": float(cls.detach()), "cons": cons}, n


def _state(model, opt, sched, history) -> dict:
    return {"state_dict": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "rng": {"torch": torch.get_rng_state()},
            "history": list(history)}
