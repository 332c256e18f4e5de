"""A video of one demo subject, for the demo's last step: predicting a video as a user would.

The demo generator writes images; this strings one subject's frames, in frame order, into an
mp4 (OpenCV's mp4v), so `aunet predict` meets a real video file.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import pandas as pd

DEMO_FPS = 10.0  # the synthetic episodes last 6-20 frames: about one or two seconds each


def write_video(manifest_csv: Path, subject: str, out: Path, fps: float = DEMO_FPS) -> Path:
    """The frames of `subject` listed in the demo's manifest.csv, as out (an .mp4)."""
    manifest_csv, out = Path(manifest_csv), Path(out)
    df = pd.read_csv(manifest_csv, dtype={"subject": str})
    rows = df[df.subject == subject].sort_values("frame")
    if rows.empty:
        raise ValueError(f"{manifest_csv}: no frames of subject {subject!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    writer = None
    for rel in rows.image_path:
        image = cv2.imread(str(manifest_csv.parent / rel))
        if writer is None:
            h, w = image.shape[:2]
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        writer.write(image)
    writer.release()
    tmp.replace(out)
    return out
