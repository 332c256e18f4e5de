"""A video of one demo subject, for the demo's last step: predicting a video as a user would.

The demo generator writes images; this strings one subject's frames, in frame order, into an
mp4 (pipeline.video.write_video), so `aunet predict` meets a real video file.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline import video

DEMO_FPS = 10.0  # the synthetic episodes last 6-20 frames: about one or two seconds each


def write_video(manifest_csv: Path, subject: str, out: Path, fps: float = DEMO_FPS) -> Path:
    """The frames of `subject` listed in the demo's manifest.csv, as out (an .mp4)."""
    manifest_csv, out = Path(manifest_csv), Path(out)
    df = pd.read_csv(manifest_csv, dtype={"subject": str})
    rows = df[df.subject == subject].sort_values("frame")
    if rows.empty:
        raise ValueError(f"{manifest_csv}: no frames of subject {subject!r}")
    video.write_video((video.read_image(manifest_csv.parent / rel) for rel in rows.image_path),
                      out, fps)
    return out
