"""The features stage's per-frame computation: the frozen FAN over crops, into shard buffers.

Kept apart from the stage's orchestration (`stages.features`) with lean imports on purpose: its
code key (store.codekey) is part of every feature shard's key, so only a change to this
computation or to the backbone recomputes features, the slowest stage.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from pipeline.config import Device, RunConfig
from pipeline.errors import InputError
from pipeline.models.fan import FEATURE_CHANNELS, FEATURE_STRIDE, FrozenFAN, load_backbone
from pipeline.quantise import quantise

PIXEL_SCALE = 255.0  # uint8 crops -> [0, 1]; the FAN takes no mean/std normalisation

# -- backbone, once per process -------------------------------------------------------------
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
    if cfg.features.device is Device.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.features.device.value)


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
    raise InputError(f"NaN/Inf (or beyond the store dtype's range) in FAN features of crop "
                     f"store {src} rows {rows[~ok].tolist()}; nothing of this shard was "
                     f"written")


def compute_shard(model: FrozenFAN, pixels: np.ndarray, valid: np.ndarray, first_row: int, *,
                  dtype: str, batch_size: int, device: torch.device, src: str,
                  on_batch: Optional[Callable[[int], None]] = None,
                  buffer: Optional[np.ndarray] = None,
                  quant: Optional[tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """Features (n, 768, s, s) of crops pixels (n, S, S, 3) uint8; rows with valid False are zero.

    dtype uint8: the codes of pipeline.quantise, whose scale and offset (n, 768) float32 are
    written into `quant` (required then); NaN/Inf is refused before quantising.

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
    if dtype == "uint8":
        if quant is None or any(q.shape != shape[:2] for q in quant):
            raise ValueError(f"a uint8 shard needs quant=(scale, offset) arrays of {shape[:2]}")
        for q in quant:
            q[~valid] = 0
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
            rows = out_t[sel] if isinstance(sel, slice) else None  # (B, C, s, s) view
            if dtype == "uint8":
                _check_finite(feats, first_row + idx, src)  # before quantising hides it
                codes, scale, offset = quantise(feats)  # (B, C, s, s) uint8; (B, C) each
                if rows is not None:
                    rows.copy_(codes)
                else:
                    out_t[torch.from_numpy(idx)] = codes.cpu()
                quant[0][idx], quant[1][idx] = scale.cpu().numpy(), offset.cpu().numpy()
            else:
                _store_float(feats, out_t, sel, idx, tdtype, cuda)
                _check_finite(out_t[torch.from_numpy(idx)] if rows is None else rows,
                              first_row + idx, src)
            if on_batch is not None:
                on_batch(idx.size)
    return out




def _store_float(feats: torch.Tensor, out_t: torch.Tensor, sel, idx: np.ndarray,
                 tdtype: torch.dtype, cuda: bool) -> None:
    """feats (B, C, s, s) into out_t's rows `sel` (a slice, or the indices idx), in the stored dtype."""
    if cuda:  # cast on the device, then one contiguous device-to-host copy
        feats = feats.to(tdtype, memory_format=torch.contiguous_format)
    if isinstance(sel, slice):
        # CPU: one pass casts to the stored dtype and turns the channels-last output into
        # (C, H, W) rows, straight into the shard buffer (a cast, then a numpy copy, was two
        # passes, ~7 ms per frame)
        out_t[sel].copy_(feats)
    else:
        out_t[torch.from_numpy(idx)] = feats.to("cpu", tdtype)
