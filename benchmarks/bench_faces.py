"""Frames per second of the faces stage (decode + BlazeFace + alignment) on a real video.

Runs the stage in-process on every frame of ../shared/media/videos/single_face.mp4 (72 frames,
640x360) into a temporary store, and prints frames per second and the share of time spent in
decoding, detection and alignment (the stage's own per-unit timers). Skips, with a message, when
../shared is absent.

    .venv/bin/python benchmarks/bench_faces.py [--repeats 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from pipeline.config import RunConfig
from stages import runner
from store.catalog import Catalog

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VIDEO = SHARED / "media" / "videos" / "single_face.mp4"
WEIGHTS = SHARED / "weights" / "blazeface" / "blazeface.pth"


def _config(tmp: Path) -> RunConfig:
    pd.DataFrame([{"subject": "s", "fold": 1, "video_path": str(VIDEO)}]).to_csv(tmp / "m.csv", index=False)
    return RunConfig.model_validate({
        "dataset": {"name": "bench", "layout": "manifest", "root": str(tmp), "au_set": "bp4d",
                    "folds": "column", "manifest_file": str(tmp / "m.csv")},
        "store": str(tmp / "art"), "faces": {"detector_weights": str(WEIGHTS)}})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=2, help="forced runs after a warm-up run")
    args = ap.parse_args()
    if not VIDEO.exists() or not WEIGHTS.exists():
        print(f"skipped: {VIDEO} or {WEIGHTS} not found (../shared absent)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(Path(tmp))
        cat = Catalog(cfg.store)
        runner.execute("manifest", cfg, cat, progress=False)
        runner.execute("faces", cfg, cat, progress=False)  # warm-up: weights, imports, page cache
        for i in range(args.repeats):
            t0 = time.perf_counter()
            s = runner.execute("faces", cfg, cat, progress=False, force=True)
            wall = time.perf_counter() - t0
            total = sum(s["timing"].values()) or 1.0
            shares = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in s["timing"].items())
            print(f"run {i + 1}: {s['computed_frames']} frames ({s['faces_found']} faces) in "
                  f"{wall:.2f} s wall: {s['computed_frames'] / wall:.1f} frames/s end to end, "
                  f"{s['frames_per_second']} frames/s in units; time: {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
