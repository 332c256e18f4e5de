"""The FAN's 68 landmark heatmaps as points: face-alignment's decoding, then source pixels.

`decode(heatmaps)`: (B, 68, H, W) -> (B, 68, 2) heatmap coordinates exactly as face-alignment
1.5's `get_preds_fromhm` gives them (its `preds`): the arg-max cell (column, row), plus 0.5, moved
a quarter cell towards the larger of its two neighbours along each axis (sign of the difference;
no move on the border cells or where they are equal), i.e. x = col + 0.5 +- 0.25. Heatmap
coordinate u covers crop pixels from u * S / W (pixel edges), so in OpenCV's centre convention
(the one the crop's similarity m uses) a point is at u * S / W - 0.5 (`to_crop`). `to_source`
maps crop pixels back through the inverse of m (2, 3).
"""
from __future__ import annotations

import numpy as np

SUBPIXEL_SHIFT = 0.25  # face-alignment's quarter-cell move towards the larger neighbour
CELL_CENTRE = 0.5


def decode(heatmaps: np.ndarray) -> np.ndarray:
    """(B, N, H, W) heatmaps -> (B, N, 2) float32 (x, y) in heatmap coordinates."""
    hm = np.asarray(heatmaps, np.float32)
    b, n, h, w = hm.shape
    flat = hm.reshape(b, n, h * w)
    idx = flat.argmax(-1)  # (B, N)
    row, col = idx // w, idx % w
    pts = np.stack([col, row], -1).astype(np.float32) + 1  # face-alignment's 1-based cells
    inner = (col > 0) & (col < w - 1) & (row > 0) & (row < h - 1)
    bi, ni = np.nonzero(inner)
    r, c = row[bi, ni], col[bi, ni]
    dx = hm[bi, ni, r, c + 1] - hm[bi, ni, r, c - 1]
    dy = hm[bi, ni, r + 1, c] - hm[bi, ni, r - 1, c]
    pts[bi, ni] += np.sign(np.stack([dx, dy], -1)) * SUBPIXEL_SHIFT
    return pts - CELL_CENTRE


def to_crop(points: np.ndarray, heatmap_size: int, crop_size: int) -> np.ndarray:
    """Heatmap coordinates -> crop pixels (OpenCV centre convention)."""
    return points * (crop_size / heatmap_size) - CELL_CENTRE


def to_source(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(N, 2) crop pixels -> source pixels through the inverse of the (2, 3) source -> crop m."""
    a, t = m[:, :2].astype(np.float64), m[:, 2].astype(np.float64)
    return ((points - t) @ np.linalg.inv(a).T).astype(np.float32)
