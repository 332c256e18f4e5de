"""Temporal triplets (t-T, t, t+T) for the TDN heads (reference "Temporal triplets").

Neighbours are looked up by the dataset's own frame number within the same `video_id`. Where a
neighbour cannot be used the middle frame stands in (so the difference on that side is zero),
counted by reason:
- `boundary`: t-T (t+T) lies before the video's first (after its last) listed frame;
- `gap`: inside the video's span, but that frame is not in the frame list;
- `missing_face`: the frame exists but has no features (valid is false).
Counts are per substituted side: a frame at both ends of a short video counts twice.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

REASONS = ("boundary", "gap", "missing_face")


def triplet_rows(manifest_df: pd.DataFrame, valid: np.ndarray, T: int) -> tuple[np.ndarray, dict]:
    """(rows (N, 3) int64 [t-T, t, t+T] indexed like the manifest's `row`, counts by reason)."""
    if T < 1:
        raise ValueError(f"temporal offset T must be >= 1, got {T}")
    for col in ("row", "video_id", "frame"):
        if col not in manifest_df:
            raise ValueError(f"manifest has no '{col}' column: cannot build temporal triplets")
    rows = manifest_df["row"].to_numpy(np.int64)
    n = len(rows)
    valid = np.asarray(valid, dtype=bool)
    if len(valid) != n:
        raise ValueError(f"valid has {len(valid)} entries but the manifest has {n} rows")
    if not np.array_equal(rows, np.arange(n)):
        raise ValueError("manifest 'row' must be 0..N-1 in order (it indexes the feature store)")
    video = manifest_df["video_id"].astype(str).to_numpy()
    frame = manifest_df["frame"].to_numpy(np.int64)
    index = pd.MultiIndex.from_arrays([video, frame])
    if not index.is_unique:
        raise ValueError("manifest lists a (video_id, frame) more than once")
    first = pd.Series(frame).groupby(video).transform("min").to_numpy()
    last = pd.Series(frame).groupby(video).transform("max").to_numpy()

    out = np.empty((n, 3), dtype=np.int64)
    out[:, 1] = rows
    counts = {r: 0 for r in REASONS}
    for col, offset in ((0, -T), (2, T)):
        target = frame + offset
        found = index.get_indexer(pd.MultiIndex.from_arrays([video, target]))  # -1: absent
        outside = (target < first) | (target > last)
        gap = (found < 0) & ~outside
        no_face = (found >= 0) & ~valid[np.maximum(found, 0)]
        use_middle = (found < 0) | no_face
        out[:, col] = np.where(use_middle, rows, found)
        counts["boundary"] += int(outside.sum())
        counts["gap"] += int(gap.sum())
        counts["missing_face"] += int(no_face.sum())
    counts["substituted"] = int(sum(counts[r] for r in REASONS))
    counts["complete"] = int(((out[:, 0] != rows) & (out[:, 2] != rows)).sum())
    return out, counts
