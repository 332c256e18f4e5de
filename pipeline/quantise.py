"""8-bit feature storage (`features.dtype: uint8`): per frame, per channel affine quantisation.

Each channel of each frame keeps its own range: offset = its minimum, scale = (max - min) / 255,
q = round((x - offset) / scale), so x = q * scale + offset within scale / 2. One FAN channel's
range differs by orders of magnitude from another's, which a per-tensor scale would crush. The
same functions serve the features stage (`quantise`), the store's reader (`dequantise_np`, on
the reader thread) and live prediction (`roundtrip`), so a head trained on
a uint8 cache sees the same values at prediction time.
"""
from __future__ import annotations

import numpy as np
import torch

LEVELS = 255  # uint8 codes 0..255


def quantise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, C, H, W) float -> (q (B, C, H, W) uint8 contiguous, scale (B, C), offset (B, C)
    float32). A constant channel gets scale 0 and q 0."""
    b, c = x.shape[:2]
    flat = x.float().reshape(b, c, -1)  # (B, C, HW)
    lo, hi = flat.amin(2), flat.amax(2)  # (B, C)
    scale = (hi - lo) / LEVELS
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    q = ((flat - lo[..., None]) * inv[..., None]).round_().clamp_(0, LEVELS).to(torch.uint8)
    return q.reshape(x.shape), scale, lo


def dequantise(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float32 = q * scale + offset (q (B, C, H, W), scale and offset (B, C)): a
    multiply, then an add, as the reader's dequantise_np does, so both give the same bits (a
    fused multiply-add rounds once, and whether torch fuses depends on the memory layout)."""
    return q.float().mul_(scale[..., None, None]).add_(offset[..., None, None])


def roundtrip(x: torch.Tensor) -> torch.Tensor:
    """x as a uint8 cache would give it back (float32, same shape): what predict feeds a head
    trained on a uint8 cache."""
    return dequantise(*quantise(x))


def dequantise_np(q: np.ndarray, scale: np.ndarray, offset: np.ndarray, out: np.ndarray,
                  channels_last: bool, tmp: np.ndarray | None = None) -> None:
    """out = q * scale + offset for one frame, in float32 then cast to out's dtype.

    q (C, H*W) uint8, or (H*W, C) when channels_last; scale, offset (C,) float32; out shaped
    like q; tmp: an optional float32 scratch of q's shape. torch's multiply, add and cast (numpy's
    broadcast multiply-add and cast took 13.6 ms per 768x64x64 frame on one thread), as the
    reader's float16 -> float32 cast already runs torch on its thread."""
    s, o = torch.from_numpy(scale), torch.from_numpy(offset)
    if not channels_last:
        s, o = s[:, None], o[:, None]
    q_t = torch.from_numpy(q)
    res = q_t.float() if tmp is None else torch.from_numpy(tmp).copy_(q_t)
    torch.from_numpy(out).copy_(res.mul_(s).add_(o))
