"""How time and memory grow with frames (issue 19): every stage, the real label tables, evaluate.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 1000 4000 16000] [--skip-stages]
        [--skip-manifests] [--skip-eval] [--eval-frames 146847] [--out /tmp/bench-scale]

1. Stages manifest .. report on synthetic datasets of N frames (64 px crops from 64 px images
   with provided landmarks, random-weight FAN, one au_fan head on one fold for one epoch over
   every training frame, 20 bootstrap draws): each stage in a fresh process, its seconds per
   1,000 frames (runner.execute timed, imports not) and peak RSS (the process's VmHWM,
   imports included), and both as ratios of the first N.
   Targets: per-frame time at the largest N within 1.25x of the smallest, peak RSS within 1.3x.
2. The manifest of the real BP4D label table (146,847 frames; the BP4D reader over label CSVs
   written from ../shared/data/labels, empty image files) and DISFA's (130,814 frames; the list
   reader), timed in a fresh process. Target: BP4D in under 60 s.
3. Evaluate + report on --eval-frames frames of synthetic probabilities through the real
   evaluate code (stages.evaluate.finish on a prediction file of that size). Targets: < 2 min,
   < 2 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
LABELS = SHARED / "data" / "labels"
STAGES = ("manifest", "faces", "features", "prior", "train", "evaluate", "report")
CROP = 64  # px: images, crops, and 16x16 feature maps
SUBJECT_FRAMES = 250  # frames per synthetic subject (one video): N / 250 subjects
FACE = np.array([[22, 26], [42, 26], [32, 36], [25, 46], [39, 46]], np.float32)  # 5 points
AU_RATE = 0.3  # synthetic labels: P(AU active)


MEASURED = ("import json, os, time\n"
            "def _hwm():  # this process image's peak RSS (MB); ru_maxrss would carry the parent's\n"
            "    for line in open('/proc/self/status'):\n"
            "        if line.startswith('VmHWM:'):\n"
            "            return int(line.split()[1]) / 1024\n")


def _child(code: str, cwd: Path) -> tuple[float, float]:
    """Run python `code` (which sets `seconds`, the timed part) in a fresh process:
    (seconds, peak RSS MB of that process, imports included)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = Path(f"/tmp/bench-scale-child-{os.getpid()}.json")
    full = MEASURED + code + (f"\njson.dump({{'seconds': seconds, 'rss': _hwm()}}, "
                              f"open({str(result)!r}, 'w'))\n")
    proc = subprocess.run([sys.executable, "-c", full], cwd=cwd, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {code[:200]}")
    out = json.loads(result.read_text())
    result.unlink()
    return out["seconds"], out["rss"]


def synthetic_dataset(root: Path, n: int) -> Path:
    """A generic-manifest dataset of n frames; returns its config path."""
    import cv2

    from pipeline.aus import AUSet

    rng = np.random.default_rng(n)
    cols = AUSet("bp4d").columns
    data = root / "data"
    rows = []
    base = rng.integers(0, 256, (CROP, CROP, 3), dtype=np.uint8)
    for r in range(n):
        s, f = divmod(r, SUBJECT_FRAMES)
        rel = Path(f"S{s:03d}") / f"{f:04d}.png"
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        img = np.roll(base, r % CROP, axis=1)  # cheap, distinct frames
        cv2.imwrite(str(data / rel), img)
        pts = FACE + rng.normal(0, 0.7, FACE.shape)
        rows.append({"subject": f"S{s:03d}", "session": "T1", "frame": f, "image_path": str(rel),
                     "fold": s % 3 + 1, "landmarks": " ".join(f"{v:.2f}" for v in pts.ravel()),
                     **{c: int(rng.random() < AU_RATE) for c in cols}})
    pd.DataFrame(rows).to_csv(data / "manifest.csv", index=False)
    cfg = {"dataset": {"name": "scale", "layout": "manifest", "root": str(data), "au_set": "bp4d",
                       "folds": "column", "manifest_file": str(data / "manifest.csv")},
           "store": str(root / "store"),
           "faces": {"detector": "provided", "size": CROP, "min_face_px": 8},
           "features": {"allow_random_weights": True, "device": "cpu", "batch_size": 32},
           "prior": {"epochs": 2},
           "train": {"epochs": 1, "batch_size": 32, "variants": ["au_fan"], "folds": [1],
                     "temporal_offset": 2},
           "eval": {"bootstrap": 20}}
    path = root / "scale.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def stage_code(config: Path, stage: str) -> str:
    return ("import warnings, torch; warnings.simplefilter('ignore'); torch.set_num_threads(1)\n"
            "from pipeline.config import load_config; from stages import runner\n"
            "from store.catalog import Catalog\n"
            f"cfg = load_config({str(config)!r})\n"
            "t0 = time.perf_counter()\n"
            f"s = runner.execute({stage!r}, cfg, Catalog(cfg.store), progress=False)\n"
            "seconds = time.perf_counter() - t0\n"
            "assert not s.get('failed'), s['failed']\n")


def bench_stages(sizes: list[int], out: Path) -> None:
    table = {}
    for n in sizes:
        root = out / f"n{n}"
        t0 = time.perf_counter()
        config = synthetic_dataset(root, n)
        print(f"N={n}: dataset written in {time.perf_counter() - t0:.1f} s", flush=True)
        for stage in STAGES:
            wall, rss = _child(stage_code(config, stage), ROOT)
            table[(n, stage)] = (wall, rss)
            print(f"  {stage:<9} {wall:8.1f} s  {wall / n * 1000:8.2f} s/1k frames  "
                  f"peak RSS {rss:7.0f} MB", flush=True)
    first = sizes[0]
    print(f"\n== stages: seconds per 1,000 frames and peak RSS (MB); ratio vs N={first}")
    print(f"{'stage':<10}" + "".join(f"{'N=' + str(n):>26}" for n in sizes))
    for stage in STAGES:
        t1, r1 = table[(first, stage)]
        cells = []
        for n in sizes:
            t, r = table[(n, stage)]
            cells.append(f"{t / n * 1000:7.2f} ({t / n / (t1 / first):4.2f}x) "
                         f"{r:6.0f} ({r / r1:4.2f}x)")
        print(f"{stage:<10}" + "".join(f"{c:>26}" for c in cells))


def bp4d_tree(root: Path) -> Path:
    """BP4D's release layout from the real label table: label CSVs and empty image files."""
    t = pd.read_parquet(LABELS / "bp4d_au_occurrence.parquet")
    aus = [c for c in t.columns if c.startswith("AU")]
    labels = root / "AUCoding" / "AU_OCC"
    labels.mkdir(parents=True, exist_ok=True)
    for (subject, task), part in t.groupby(["subject", "task"]):
        frame_dir = root / "frames" / subject / task
        frame_dir.mkdir(parents=True, exist_ok=True)
        out = part[["frame", *aus]].rename(columns={"frame": "0", **{a: str(int(a[2:])) for a in aus}})
        out.to_csv(labels / f"{subject}_{task}.csv", index=False)
        for f in part.frame:
            (frame_dir / f"{int(f)}.jpg").touch()
    cfg = {"dataset": {"name": "bp4d_full", "layout": "bp4d", "root": str(root),
                       "frames_dir": str(root / "frames"), "au_set": "bp4d", "folds": "standard"},
           "store": str(root / "store")}
    return _write(root / "bp4d.yaml", cfg, len(t))


def disfa_list(root: Path) -> Path:
    """DISFA's real label table as the list format (paths and 0/1 rows), empty image files."""
    t = pd.read_parquet(LABELS / "disfa_au_occurrence.parquet")
    aus = [c for c in t.columns if c.startswith("AU")]
    paths = [f"{s}/T1/{int(f)}.jpg" for s, f in zip(t.subject, t.frame)]
    for s in t.subject.unique():
        (root / s / "T1").mkdir(parents=True, exist_ok=True)
    for p in paths:
        (root / p).touch()
    (root / "paths.txt").write_text("\n".join(paths) + "\n")
    (root / "labels.txt").write_text("\n".join(" ".join(map(str, r)) for r in
                                               t[aus].to_numpy(int)) + "\n")
    cfg = {"dataset": {"name": "disfa_full", "layout": "list", "root": str(root),
                       "list_paths": str(root / "paths.txt"),
                       "list_labels": str(root / "labels.txt"), "au_set": "disfa",
                       "folds": "kfold", "n_folds": 3},
           "store": str(root / "store")}
    return _write(root / "disfa.yaml", cfg, len(t))


def _write(path: Path, cfg: dict, n: int) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    print(f"{path.stem}: {n} labelled frames written", flush=True)
    return path


def bench_manifests(out: Path) -> None:
    if not LABELS.is_dir():
        print(f"skipped: the real label tables are not at {LABELS}")
        return
    print("\n== full-size manifests (fresh process each: wall s, peak RSS MB)")
    for name, make in (("bp4d", bp4d_tree), ("disfa", disfa_list)):
        config = make(out / name)
        wall, rss = _child(stage_code(config, "manifest"), ROOT)
        print(f"{name} manifest: {wall:.1f} s, peak RSS {rss:.0f} MB", flush=True)


def bench_eval(n: int, out: Path) -> None:
    code = (f"import sys; sys.argv = ['x', {str(out)!r}, '{n}']\n"
            "from benchmarks.scale_eval import main\n"
            "seconds = main()\n")
    wall, rss = _child(code, ROOT)
    print(f"== evaluate + report on {n} frames: {wall:.1f} s, peak RSS of the process (set-up, "
          f"manifest and unit files included) {rss:.0f} MB", flush=True)


def fan_rate(frames: int = 8, threads: int = 1) -> float:
    """This machine's FAN rate: random-weight FAN forwards per second on 256 px crops, batch 8,
    `threads` torch threads: printed beside absolute timings so they can be compared across
    machines."""
    import torch

    from pipeline.config import FeaturesConfig
    from pipeline.models.fan import load_backbone

    torch.set_num_threads(threads)
    model = load_backbone(FeaturesConfig(allow_random_weights=True))[0]
    x = torch.rand(8, 3, 256, 256)
    with torch.inference_mode():
        model(x[:2])  # warm-up
        t0 = time.perf_counter()
        for _ in range(frames // 8):
            model(x)
    return frames / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    p.add_argument("--out", type=Path, default=Path("/tmp/bench-scale"))
    p.add_argument("--eval-frames", type=int, default=146_847)
    p.add_argument("--skip-stages", action="store_true")
    p.add_argument("--skip-manifests", action="store_true")
    p.add_argument("--skip-eval", action="store_true")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import warnings

    warnings.simplefilter("ignore", UserWarning)
    print(f"FAN rate (this machine, 1 thread, 256 px, batch 8): {fan_rate():.2f} frames/s",
          flush=True)
    if not args.skip_manifests:
        bench_manifests(args.out / "manifests")
    if not args.skip_eval:
        bench_eval(args.eval_frames, args.out / "eval")
    if not args.skip_stages:
        bench_stages(args.sizes, args.out)


if __name__ == "__main__":
    main()
