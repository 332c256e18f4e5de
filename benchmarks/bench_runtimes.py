"""The runtimes and protocols of `aunet predict` side by side (bench_predict.py --runtimes,
--modes): frames/s, ratios, probability differences, how often AU decisions differ."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd

from benchmarks.predict_setup import VIDEO, config, predict_once
from pipeline.predict.predictor import PREFETCH_CHUNKS
from stages import predict

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
    """torch, onnx, and onnx without the decode/detect thread or without ONNX Runtime's memory
    arena, alternating; best of REPS each."""
    fps, tables, parts, engines = {}, {}, {}, {}
    kinds = {"torch": {"runtime": "torch"}, "onnx": {"runtime": "onnx"},
             "onnx-serial": {"runtime": "onnx"}, "onnx-no-arena": {"runtime": "onnx"}}
    for rep in range(REPS):
        for name, extra in kinds.items():
            depth = 0 if name.endswith("serial") else PREFETCH_CHUNKS
            with mock.patch("pipeline.predict.predictor.PREFETCH_CHUNKS", depth), \
                    mock.patch("pipeline.predict.runtime.MEMORY_ARENA", not name.endswith("no-arena")):
                if name not in engines:  # each kind's own engine, loaded outside the timed runs
                    predict._engine.cache_clear()
                    engines[name] = predict.engine(config(bundle, VIDEO, tmp, temporal, **extra))
                with mock.patch.object(predict, "engine", lambda cfg, e=engines[name]: e):
                    _, df, r = timed(bundle, VIDEO, tmp / f"rt-{name}-{rep}", temporal,
                                     warm=rep == 0, **extra)
            f = r["frames_per_s"]  # the unit's own seconds, the engine loaded before them
            if f > fps.get(name, 0):
                fps[name], tables[name], parts[name] = f, df, r
    for name, r in parts.items():
        print(f"{VIDEO.name} {name:>13}: {fps[name]:6.2f} frames/s (best of {REPS}; {r['frames']} "
              "frames; " + ", ".join(f"{k} {v:.2f} s" for k, v in r["timing"].items()) + ")")
    d = prob_diff(tables["torch"], tables["onnx"])
    print(f"RATIO onnx / torch = {fps['onnx'] / fps['torch']:.3f} (target >= {RATIO_TARGET}); "
          f"onnx-serial / torch = {fps['onnx-serial'] / fps['torch']:.3f}; "
          f"onnx-no-arena / torch = {fps['onnx-no-arena'] / fps['torch']:.3f}; "
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


def sampling(bundle: Path, tmp: Path, temporal: str, every: int) -> None:
    """`--every N` on the video, alternating: every frame retrieved and converted to RGB (as
    before the sampled decode) against the dropped frames only grabbed; best of REPS each."""
    from pipeline.video import iter_video

    def retrieve_all(path, keep, info):
        return iter_video(path, None, info)

    best: dict[str, dict] = {}
    for rep in range(REPS):
        for name in ("retrieve all", "grab dropped"):
            patch = mock.patch("stages.predict.iter_video", retrieve_all) if name == "retrieve all" \
                else contextlib.nullcontext()
            with patch:
                fps, _, r = timed(bundle, VIDEO, tmp / f"ev-{rep}-{name[:4]}", temporal,
                                  warm=rep == 0, every=every)
            if fps > best.get(name, {}).get("fps", 0):
                best[name] = {"fps": fps, **r}
    for name, r in best.items():
        print(f"{VIDEO.name} --every {every} {name:>12}: {r['fps']:6.2f} rows/s ({r['frames']} rows "
              f"of {r['decoded']} frames; decode {r['timing']['decode']:.2f} s, detect "
              f"{r['timing']['detect']:.2f} s, fan {r['timing']['fan']:.2f} s; best of {REPS})")
    print(f"RATIO grab / retrieve = {best['grab dropped']['fps'] / best['retrieve all']['fps']:.3f}")
