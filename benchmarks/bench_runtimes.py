"""The runtimes and protocols of `aunet predict` side by side (bench_predict.py --runtimes,
--modes): frames/s, ratios, probability differences, how often AU decisions differ."""
from __future__ import annotations

import time
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd

from benchmarks.predict_setup import VIDEO, predict_once
from pipeline.predict.predictor import PREFETCH_CHUNKS

NO_FACE = VIDEO.parent / "no_face.mp4"
FACE_NOFACE = VIDEO.parent / "face_noface.mov"
RATIO_TARGET, DIFF_TARGET, FACE_FREE_TARGET = 1.4, 1e-4, 3.0


def timed(bundle: Path, video: Path, out: Path, temporal: str, warm: bool = True,
          **extra) -> tuple[float, pd.DataFrame, dict]:
    """(frames/s, table, summary) of a second run (the first loads, exports, warms up), or with
    warm=False of one run, from its summary (whose seconds exclude loading the engine); the
    table's probabilities unrounded (the tables round them to 4 decimals)."""
    from stages import predict_outputs

    with mock.patch.object(predict_outputs, "round", create=True, new=lambda v, n=0: v):
        if warm:
            predict_once(bundle, video, out / "warm", temporal, format="parquet", **extra)
        t0 = time.perf_counter()
        r = predict_once(bundle, video, out / "timed", temporal, format="parquet", **extra)
        wall = time.perf_counter() - t0
    fps = r["frames"] / wall if warm else r["frames_per_s"]
    return fps, pd.read_parquet(out / "timed" / f"{video.stem}.parquet"), r


def prob_diff(a: pd.DataFrame, b: pd.DataFrame) -> float:
    p = [c for c in a.columns if c.endswith("_p")]
    face = (a.success == 1).to_numpy()
    return float(np.abs(a.loc[face, p].to_numpy(float) - b.loc[face, p].to_numpy(float)).max())


REPS = 2  # timed runs of each runtime, alternating (the best is kept: a shared machine)


def runtimes(bundle: Path, tmp: Path, temporal: str) -> None:
    fps, tables, parts = {}, {}, {}
    kinds = {"torch": {"runtime": "torch"}, "onnx": {"runtime": "onnx"}, "onnx-serial": {"runtime": "onnx"}}
    for rep in range(REPS):
        for name, extra in kinds.items():
            depth = 0 if name.endswith("serial") else PREFETCH_CHUNKS
            with mock.patch("pipeline.predict.predictor.PREFETCH_CHUNKS", depth):
                _, df, r = timed(bundle, VIDEO, tmp / f"rt-{name}-{rep}", temporal, warm=rep == 0, **extra)
            f = r["frames_per_s"]  # the unit's own seconds: loading the engine is not in them
            if f > fps.get(name, 0):
                fps[name], tables[name], parts[name] = f, df, r
    for name, r in parts.items():
        print(f"{VIDEO.name} {name:>11}: {fps[name]:6.2f} frames/s (best of {REPS}; {r['frames']} "
              "frames; " + ", ".join(f"{k} {v:.2f} s" for k, v in r["timing"].items()) + ")")
    d = prob_diff(tables["torch"], tables["onnx"])
    print(f"RATIO onnx / torch = {fps['onnx'] / fps['torch']:.3f} (target >= {RATIO_TARGET}); "
          f"onnx-serial / torch = {fps['onnx-serial'] / fps['torch']:.3f}; "
          f"max |p_onnx - p_torch| = {d:.2e} (target <= {DIFF_TARGET:g})")
    if not NO_FACE.exists():
        print(f"skipped face-free: {NO_FACE} not found")
        return
    from pipeline.faces.gate import FineGate

    every_frame = lambda: FineGate(every=1)  # noqa: E731  the full search on every face-free frame
    with mock.patch("stages.predict.FineGate", every_frame):
        before, _, rb = timed(bundle, NO_FACE, tmp / "ff-before", temporal, runtime="auto")
    after, _, ra = timed(bundle, NO_FACE, tmp / "ff-after", temporal, runtime="auto")
    print(f"{NO_FACE.name} (face-free, {ra['frames']} frames): full search on every frame "
          f"{before:.2f} frames/s ({rb['face_free_frames_searched']}), gated {after:.2f} frames/s "
          f"({ra['face_free_frames_searched']}): RATIO {after / before:.2f} (target >= "
          f"{FACE_FREE_TARGET:g})")


def modes(bundle: Path, tmp: Path) -> None:
    """Each temporal mode x flip on the shared face videos: frames/s, and the share of face-frame
    AU decisions that differ from `cached` without flip."""
    for video in (VIDEO, FACE_NOFACE):
        base = None
        for temporal in ("cached", "exact"):
            for flip in (False, True):
                fps, df, _ = timed(bundle, video, tmp / f"m-{video.stem}-{temporal}-{flip}",
                                   temporal, warm=False, tta_flip=flip)
                c = [x for x in df.columns if x.endswith("_c")]
                face = (df.success == 1).to_numpy()
                dec = df.loc[face, c].to_numpy(float)
                base = dec if base is None else base
                print(f"{video.name}: {temporal:>6} flip {'on ' if flip else 'off'}: {fps:6.2f} "
                      f"frames/s; AU decisions differing from cached/no flip: "
                      f"{100 * (dec != base).mean():.2f}% of {dec.size}")
