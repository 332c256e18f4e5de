"""The runtimes and protocols of `aunet predict` side by side (bench_predict.py --runtimes,
--modes): frames/s, ratios, probability differences, how often AU decisions differ."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd

from benchmarks.predict_setup import VIDEO, in_fresh_process, predict_once
from pipeline.predict.predictor import PREFETCH_CHUNKS

NO_FACE = VIDEO.parent / "no_face.mp4"
FACE_NOFACE = VIDEO.parent / "face_noface.mov"
RATIO_TARGET, DIFF_TARGET, FACE_FREE_TARGET = 1.4, 1e-4, 3.0
FACE_FREE_COST = 2.0  # a face-free frame's cost, against a face frame's detection (at most)


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
# What each side-by-side kind changes: runtime, the decode/detect thread (prefetch chunks; None:
# the default for this machine's cores, pipeline/predict/predictor.py) and ONNX Runtime's memory
# arena (pipeline/predict/runtime.py).
KINDS = {"torch": ("torch", None, None), "onnx": ("onnx", None, None),
         "torch-prefetch": ("torch", PREFETCH_CHUNKS, None),
         "onnx-prefetch": ("onnx", PREFETCH_CHUNKS, None), "onnx-no-arena": ("onnx", None, False)}


def child(kind: str, bundle: Path, out: Path, temporal: str) -> dict:
    """One kind in this (fresh) process: a warm-up run, then the timed run's summary. Each kind
    gets its own process: ONNX Runtime's thread pools and torch's allocator are process-wide,
    so kinds run one after another in one process measure each other's leftovers."""
    import torch

    from pipeline.predict import predictor, runtime as rt

    torch.set_num_threads(2)
    runtime, depth, arena = KINDS[kind]
    if depth is not None:  # the thread on (or off) whatever the cores
        predictor.PREFETCH_CHUNKS, predictor.SERIAL_CORES = depth, 0
    rt.MEMORY_ARENA = rt.MEMORY_ARENA if arena is None else arena
    _, _, r = timed(bundle, VIDEO, out, temporal, warm=True, runtime=runtime)
    return {"frames_per_s": r["frames_per_s"], "frames": r["frames"], "timing": r["timing"]}


def _run_child(kind: str, bundle: Path, out: Path, temporal: str) -> dict:
    return in_fresh_process("import json\nfrom pathlib import Path\n"
                            "from benchmarks.bench_runtimes import child\n"
                            f"print(json.dumps(child({kind!r}, Path({str(bundle)!r}), "
                            f"Path({str(out)!r}), {temporal!r})))", kind)


def runtimes(bundle: Path, tmp: Path, temporal: str) -> None:
    """Each kind of KINDS in its own process, alternating; best of REPS each."""
    fps, parts, tables = {}, {}, {}
    for rep in range(REPS):
        for name in KINDS:
            out = tmp / f"rt-{name}-{rep}"
            r = _run_child(name, bundle, out, temporal)
            f = r["frames_per_s"]  # the unit's own seconds, the engine loaded before them
            if f > fps.get(name, 0):
                fps[name], parts[name] = f, r
                tables[name] = pd.read_parquet(out / "timed" / f"{VIDEO.stem}.parquet")
    for name, r in parts.items():
        print(f"{VIDEO.name} {name:>13}: {fps[name]:6.2f} frames/s (best of {REPS}; {r['frames']} "
              "frames; " + ", ".join(f"{k} {v:.2f} s" for k, v in r["timing"].items()) + ")")
    d = prob_diff(tables["torch"], tables["onnx"])
    print(f"RATIO onnx / torch = {fps['onnx'] / fps['torch']:.3f} (target >= {RATIO_TARGET}); " +
          "; ".join(f"{k} / torch = {fps[k] / fps['torch']:.3f}" for k in KINDS
                    if k not in ("torch", "onnx")) +
          f"; max |p_onnx - p_torch| = {d:.2e} (target <= {DIFF_TARGET:g})")
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
    if FACE_NOFACE.exists():
        face_ms = face_frame_detection_ms(bundle)
        n = ra["frames"]
        detect_ms, all_ms = 1000 * ra["timing"]["detect"] / n, 1000 / ra["frames_per_s"]
        print(f"a face-free frame (960x540): detection {detect_ms:.1f} ms, all in {all_ms:.1f} ms "
              f"(decode, rows, table, timeline); a face frame's detection ({FACE_NOFACE.name}, "
              f"960x540): {face_ms:.1f} ms: RATIO detection {detect_ms / face_ms:.2f}, all in "
              f"{all_ms / face_ms:.2f} (target <= {FACE_FREE_COST:g})")


def face_frame_detection_ms(bundle: Path) -> float:
    """ms a frame of the bundle's detector on the face frames of face_noface.mov (the same
    960x540 as no_face.mp4), in batches of 16 under a video's gate, as predict runs it; best
    of REPS."""
    from pipeline.faces.factory import make_detector
    from pipeline.faces.gate import FineGate
    from pipeline.predict.bundle import detector_config, read_spec
    from pipeline.predict.predictor import DETECT_BATCH
    from pipeline.video import iter_video

    det = make_detector(detector_config(bundle, read_spec(bundle)))
    frames = [img for _, img in iter_video(FACE_NOFACE)]
    found = det.detect_video_batch(frames, FineGate())
    face = [f for f, d in zip(frames, found) if len(d)]
    best = float("inf")
    for _ in range(REPS):
        gate, t0 = FineGate(), time.perf_counter()
        for i in range(0, len(face), DETECT_BATCH):
            det.detect_video_batch(face[i:i + DETECT_BATCH], gate)
        best = min(best, 1000 * (time.perf_counter() - t0) / len(face))
    return best


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
