"""Batched prediction of a head over frames of a feature store (evaluation and prediction)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipeline.errors import NonFinite
from pipeline.learning.batches import batch_buffer, gather_shifted, read_unique


def predict(model: nn.Module, store, rows: np.ndarray, triplets: np.ndarray | None = None,
            batch_size: int = 64) -> np.ndarray:
    """Probabilities (n, n_AU) float32 for the frames `rows` (n,), in the order given.

    `triplets` (n, 3) int64 [t-T, t, t+T], aligned with `rows` (triplets[:, 1] == rows), is
    required by temporal heads and ignored by static ones. Frames are read in ascending order
    within each batch; the model runs in eval mode under torch.inference_mode.
    """
    rows = np.asarray(rows, dtype=np.int64)
    temporal = bool(getattr(model, "temporal", False))
    if temporal:
        if triplets is None:
            raise ValueError("this head is temporal: predict() needs triplets (n, 3)")
        triplets = np.asarray(triplets, dtype=np.int64)
        if triplets.shape != (len(rows), 3) or not np.array_equal(triplets[:, 1], rows):
            raise ValueError(f"triplets must be (n, 3) with triplets[:, 1] == rows; got shape "
                             f"{triplets.shape} for {len(rows)} rows")
    model.eval()
    model.to(memory_format=torch.channels_last)  # as in training: the batches are channels last
    samples = triplets if temporal else rows[:, None]  # (n, S)
    out = []
    # one batch buffer for every batch: no page faults per batch
    buf = batch_buffer(samples.shape[1], min(batch_size, len(rows)), *store.shape)
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            stored, index = read_unique(store, samples[i:i + batch_size])  # (U, C, H, W) float16
            x = gather_shifted(stored, index, out=buf)  # (S, B, C, H, W) float32
            logits = model(x[1], x[0], x[2]) if temporal else model(x[0])
            probs = torch.sigmoid(logits).float().numpy()  # (B, n_AU)
            if not np.isfinite(probs).all():  # NaN in, NaN out: never scored as a prediction
                raise NonFinite(f"the head gave NaN probabilities for rows "
                                    f"{rows[i:i + batch_size][~np.isfinite(probs).all(1)][:10].tolist()}"
                                    "; its weights or features hold NaN/Inf (retrain it with "
                                    "--force, or run `aunet features --verify`)")
            out.append(probs)
    n_aus = model.classifier.fc2.out_features
    return np.concatenate(out) if out else np.zeros((0, n_aus), dtype=np.float32)
