"""`aunet predict` speed and memory on a real video (../shared/media/videos/single_face.mp4).

Speed: end-to-end frames/s of the predict stage (one input, in-process) with the share of decode,
detection, crop, FAN and head, against the same parts run bare on the same frames (decode all
frames; detect them in batches; warp the crops; FAN over the crops in batches; the head over the
features): ratio = bare seconds / predict seconds (target >= 0.85).
Memory: peak resident memory of a fresh process predicting the video, and the same video repeated
four times (ratio target <= 1.15: flat in video length), and the video on the torch runtime.

Runtimes (`--runtimes`): the torch path and the ONNX runtime side by side on the same bundle and
video, each in a fresh process of its own (benchmarks/bench_runtimes.py says why), frames/s of
each, their ratio (target >= 1.4) and the largest probability difference (target <= 1e-4, from
Parquet tables: exact values); then a face-free video (no_face.mp4) with
the finer tiles on every face-free frame (before the gate, pipeline/faces/gate.py) and gated
(target >= 3x). `--modes`: frames/s of each temporal mode x flip and how often their AU
decisions differ from cached without flip, on the shared videos. `--every N`: `--every N` with
every frame retrieved (as before the sampled decode) against the dropped frames only grabbed.

    .venv/bin/python benchmarks/bench_predict.py [--temporal cached|exact] [--crop 256]
        [--memory | --memory-only] [--agreement] [--runtimes] [--modes] [--every N] [--bundle DIR]
        (--bundle: a trained bundle instead of an untrained one)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.config import TemporalMode, Variant
from pipeline.predict.runtime import cores
from pipeline.video import iter_video, video_fps, write_video
from benchmarks.predict_setup import BLAZE, VIDEO, in_fresh_process, make_bundle, predict_once

def bare(bundle: Path, video: Path, temporal: str) -> dict:
    """The same parts with no pipeline around them, on the same frames."""
    from pipeline.predict.bundle import detector_config, read_spec
    from pipeline.faces.factory import make_detector
    from pipeline.predict.predictor import Engine
    from pipeline.faces.tracking import largest

    spec = read_spec(bundle)
    eng = Engine(bundle, spec, temporal=TemporalMode(temporal), tta_flip=False,
                 allow_random_weights=True)
    fan, head, det = eng.fan, eng.head, make_detector(detector_config(bundle, spec))
    t = {}
    t0 = time.perf_counter()
    frames = [img for _, img in iter_video(video)]
    t["decode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dets = []
    for i in range(0, len(frames), 16):
        dets += det.detect_batch(frames[i:i + 16])
    t["detect"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    crops = []
    for img, d in zip(frames, dets):
        for k in largest(d, 24):
            crops.append(cv2.warpAffine(img, eng.transform(d.boxes[k], d.keypoints[k]),
                                        (spec.crop.size, spec.crop.size)))
    t["crop"] = time.perf_counter() - t0
    passes = 3 if (temporal == "exact" and head.temporal) else 1
    t0 = time.perf_counter()
    feats = []
    with torch.inference_mode():
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
        for _ in range(passes):
            for i in range(0, len(x), 8):
                feats.append(fan(x[i:i + 8].float() / 255).half())
    t["fan"] = time.perf_counter() - t0
    f = torch.cat(feats[:-(-len(x) // 8)]).float()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(f), 8):
            fb = f[i:i + 8]
            head(fb, fb, fb) if head.temporal else head(fb)
    t["head"] = time.perf_counter() - t0
    return t


def repeated(video: Path, times: int, out: Path) -> Path:
    """The video written `times` times in a row (the same frames, a longer file)."""
    write_video((img for _ in range(times) for _, img in iter_video(video)), out, video_fps(video))
    return out


# The child's own high-water mark (VmHWM: its memory image since exec). ru_maxrss is not: Linux
# folds the forking parent's resident size into it at exec, so every child of a large benchmark
# process "peaked" at the parent's size (4864 MB for torch and onnx alike, measured).
PEAK = ("hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
        "import resource, json\n"
        "print(json.dumps(hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))")


def peak_rss_mb(bundle: Path, video: Path, out: Path, temporal: str, runtime: str = "auto") -> float:
    """Peak resident memory (MB) of a fresh process that predicts one video on `runtime`."""
    code = ("from benchmarks.predict_setup import predict_once\nfrom pathlib import Path\n"
            f"predict_once(Path({str(bundle)!r}), Path({str(video)!r}), Path({str(out)!r}), {temporal!r}, "
            f"runtime={runtime!r})\n" + PEAK)
    return in_fresh_process(code, f"peak memory on {runtime}") / 1024


def memory(bundle: Path, tmp: Path, temporal: str) -> None:
    """Peak memory of the video on the default runtime, of it four times over, and on torch."""
    long = repeated(VIDEO, 4, tmp / "x4.mp4")
    one = peak_rss_mb(bundle, VIDEO, tmp / "m1", temporal)
    four = peak_rss_mb(bundle, long, tmp / "m4", temporal)
    torch_one = peak_rss_mb(bundle, VIDEO, tmp / "mt", temporal, "torch")
    print(f"peak memory: {one:.0f} MB for the video, {four:.0f} MB for it 4 times over: RATIO "
          f"{four / one:.3f} (target <= 1.15); runtime torch: {torch_one:.0f} MB for the video")


def agreement(bundle: Path, tmp: Path) -> None:
    """`cached` against `exact` on the shared videos: AU decisions agreeing, speed."""
    import pandas as pd

    for name in ("single_face.mp4", "face_noface.mov"):
        video, res = VIDEO.parent / name, {}
        for mode in ("cached", "exact"):
            t0 = time.perf_counter()
            r = predict_once(bundle, video, tmp / mode, mode)
            res[mode] = (pd.read_csv(tmp / mode / f"{video.stem}.csv", skipinitialspace=True),
                         r["frames"] / (time.perf_counter() - t0))
        a, b = res["cached"][0], res["exact"][0]
        face = (a.success == 1).to_numpy()
        c = [x for x in a.columns if x.endswith("_c")]
        p = [x for x in a.columns if x.endswith("_p")]
        agree = (a.loc[face, c].to_numpy() == b.loc[face, c].to_numpy()).mean()
        dp = np.abs(a.loc[face, p].to_numpy(float) - b.loc[face, p].to_numpy(float))
        print(f"{name}: {face.sum()} face frames; AU decisions agree {100 * agree:.1f}%, mean "
              f"|p_exact - p_cached| {dp.mean():.5f}; cached {res['cached'][1]:.2f} frames/s, "
              f"exact {res['exact'][1]:.2f} frames/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--temporal", default="cached", choices=["cached", "exact"])
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--variant", default="aunet")
    ap.add_argument("--bundle", help="measure this bundle (e.g. the demo's exported AUNet)")
    ap.add_argument("--memory", action="store_true", help="also measure peak memory (3 processes)")
    ap.add_argument("--memory-only", action="store_true", help="only peak memory (no speed runs)")
    ap.add_argument("--runtimes", action="store_true", help="torch against onnx (and face-free video)")
    ap.add_argument("--modes", action="store_true", help="temporal mode x flip: speed, decisions")
    ap.add_argument("--every", type=int, help="--every N: dropped frames retrieved against grabbed")
    ap.add_argument("--agreement", action="store_true",
                    help="also compare the cached and exact temporal modes on the shared videos")
    args = ap.parse_args()
    if not VIDEO.exists() or not BLAZE.exists():
        print(f"skipped: {VIDEO} or {BLAZE} not found (../shared absent)")
        return 0
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = Path(args.bundle) if args.bundle else make_bundle(tmp / "bundle", args.crop,
                                                                   Variant(args.variant))
        if args.runtimes or args.modes or args.every:
            from benchmarks.bench_runtimes import modes, runtimes, sampling

            print(f"== {torch.get_num_threads()} torch threads, {cores()} cores")
            runtimes(bundle, tmp, args.temporal) if args.runtimes else None
            modes(bundle, tmp) if args.modes else None
            sampling(bundle, tmp, args.temporal, args.every) if args.every else None
            return 0
        predict_once(bundle, VIDEO, tmp / "warm", args.temporal)  # warm-up: imports, weights
        if args.memory_only:
            memory(bundle, tmp, args.temporal)
            return 0
        best = None
        for rep in range(2):
            t0 = time.perf_counter()
            r = predict_once(bundle, VIDEO, tmp / f"o{rep}", args.temporal)
            wall = time.perf_counter() - t0
            parts = bare(bundle, VIDEO, args.temporal)
            if best is None or wall / sum(parts.values()) < best[0] / sum(best[2].values()):
                best = (wall, r, parts)
        wall, r, parts = best
        n = r["frames"]
        total = sum(parts.values())
        from pipeline.predict.bundle import read_spec

        spec = read_spec(bundle)  # what was measured: the given bundle's, not the defaults
        print(f"== predict {VIDEO.name}: {n} frames, {Variant(spec.variant).value} ({args.temporal}), crop "
              f"{spec.crop.size}, {torch.get_num_threads()} torch threads")
        print(f"predict stage : {n / wall:7.2f} frames/s ({wall:.2f} s; shares: " + ", ".join(
            f"{k} {100 * v / wall:.0f}%" for k, v in r["timing"].items()) + ")")
        print(f"bare parts    : {n / total:7.2f} frames/s ({total:.2f} s: " + ", ".join(
            f"{k} {v:.2f}" for k, v in parts.items()) + ")")
        print(f"RATIO bare / predict = {total / wall:.3f} (target >= 0.85)")
        if args.memory:
            memory(bundle, tmp, args.temporal)
        if args.agreement:
            agreement(bundle, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
