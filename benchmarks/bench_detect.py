"""Face detectors on the shared media: is a face present, per frame / image, and how small a face.

For each setting prints
  - precision / recall of "a face is present" over all frames: the 4 images (aflw-test 1 face,
    grass none, single_face 1, multi_face 5) and every decoded frame of single_face.mp4 (72, all
    face), no_face.mp4 (95, none) and face_noface.mov (169; truth in
    tests/data/face_noface_truth.json), with the false-face frames per file;
  - the number of faces found on multi_face.jpg (5 real);
  - a synthetic size sweep: three real face photos (frontal, tilted back, turned three-quarter)
    scaled so the face is a given fraction of the short side of a 2560x1912 canvas (grass or
    title-lettering background, two positions): the smallest fraction down to which all 12 cases
    are found, the smallest found at all, and the detections that are not the placed face (IoU
    < 0.3: false faces, or the face with a badly sized box);
  - detection frames/s over the media (one CPU thread, decode excluded).
Rows "+persist N" apply faces.temporal=persist to the same video detections (64-row blocks).
Skips, with a message, when ../shared is absent.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_detect.py [--settings default,old,...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.config import FacesConfig
from pipeline.faces.factory import make_detector, min_score
from pipeline.faces.types import DetectorError
from benchmarks.detect_eval import (Presence, above, detect_all, found_face, load_media,
                                  persist_blocks, smallest_found, sweep_cases)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
W = SHARED / "weights"
FRONT, BACK = W / "blazeface" / "blazeface.pth", W / "blazeface" / "blazefaceback.pth"
RETINA = W / "retinaface" / "mobilenet0.25_Final.pth"
FRACS = (0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.06, 0.05, 0.04)  # face height / short side
SETTINGS = {  # name -> FacesConfig fields
    "old": dict(detector_weights=FRONT, min_score=0.5, tile_pyramid="off"),  # before this work
    "front-0.8": dict(detector_weights=FRONT, tile_pyramid="off"),  # new threshold only
    "default": dict(detector_weights=FRONT),  # + pyramid on frames without a face
    "always": dict(detector_weights=FRONT, tile_pyramid="always"),
    "back": dict(detector="blazeface_back", detector_weights=BACK, tile_pyramid="off"),
    "back-fallback": dict(detector="blazeface_back", detector_weights=BACK),
    "retinaface": dict(detector="retinaface", detector_weights=RETINA),
}
PERSIST = (2, 3, 5)  # persist_frames shown for the old and default settings


def _presence(clips, dets_per_clip) -> tuple[Presence, dict[str, int]]:
    total, false_frames = Presence(), {}
    for clip, dets in zip(clips, dets_per_clip):
        found = np.array([len(d) > 0 for d in dets])
        total.add(found, clip.truth)
        false_frames[clip.name] = int((found & ~clip.truth).sum())
    return total, false_frames


def _row(name: str, p: Presence, false_frames: dict, multi: int, extra: str = "") -> None:
    fps = ", ".join(f"{k} {v}" for k, v in false_frames.items() if v)
    print(f"{name:22s} precision {p.precision:.3f} recall {p.recall:.3f} "
          f"(tp {p.tp} fp {p.fp} fn {p.fn} tn {p.tn}); multi_face {multi} faces; "
          f"false frames: {fps or 'none'}{extra}")


def run(name: str, fields: dict, clips, do_sweep: bool) -> None:
    try:
        cfg = FacesConfig(**fields)
        det = make_detector(cfg)
    except DetectorError as e:
        print(f"{name:22s} skipped: {e}")
        return
    if not clips:
        print(f"{name} (>= {min_score(cfg):.2f})")
    else:
        _media(name, cfg, det, clips)
    if do_sweep:
        _sweep(det)


def _media(name: str, cfg: FacesConfig, det, clips) -> None:
    n = sum(len(c.frames) for c in clips)
    t0 = time.perf_counter()
    dets = [detect_all(det, c.frames) for c in clips]
    fps = n / (time.perf_counter() - t0)
    names = [c.name for c in clips]
    multi = len(dets[names.index("multi_face.jpg")][0])
    p, ff = _presence(clips, dets)
    _row(f"{name} (>= {min_score(cfg):.2f})", p, ff, multi, f"; {fps:.1f} frames/s")
    if name in ("old", "default"):
        for k in PERSIST:
            pd = [persist_blocks(d, k) if c.video else d for c, d in zip(clips, dets)]
            _row(f"  +persist {k}", *_presence(clips, pd), multi)
    if name == "old":  # the same detections at higher thresholds (scores do not move with it)
        for thr in (0.6, 0.7, 0.75, 0.8, 0.85):
            pt = [above(d, thr) for d in dets]
            _row(f"  old at >= {thr}", *_presence(clips, pt), len(pt[names.index("multi_face.jpg")][0]))


def _sweep(det) -> None:
    hits: dict[str, dict[float, list[bool]]] = {}  # photo -> size -> found per case
    others, cases = 0, 0
    t0 = time.perf_counter()
    for label, frac, canvas, box in sweep_cases(SHARED, FRACS):
        d = det.detect(canvas)
        photo = label.split("/")[1].split("@")[0]
        hits.setdefault("all", {}).setdefault(frac, []).append(found_face(d, box))
        hits.setdefault(photo, {}).setdefault(frac, []).append(found_face(d, box))
        others += sum(not found_face(d.take(np.array([k])), box) for k in range(len(d)))
        cases += 1
    rate = cases / (time.perf_counter() - t0)
    for photo, h in hits.items():
        every, anyf = smallest_found(h)
        per = " ".join(f"{f}:{sum(v)}/{len(v)}" for f, v in sorted(h.items(), reverse=True))
        print(f"{'':4s}sweep {photo:16s} all found down to {every}, any down to {anyf}; {per}")
    print(f"{'':4s}sweep: {others} other detections on {cases} canvases ({rate:.2f} canvases/s)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated: " + ",".join(SETTINGS))
    ap.add_argument("--no-sweep", action="store_true", help="skip the synthetic size sweep")
    ap.add_argument("--sweep-only", action="store_true", help="skip the media (precision / recall)")
    args = ap.parse_args()
    if not (SHARED / "media").is_dir():
        print(f"skipped: {SHARED / 'media'} not found (../shared absent)")
        return 0
    import torch

    torch.set_num_threads(1)  # the machine is shared; per-thread numbers are comparable
    clips = [] if args.sweep_only else load_media(SHARED)
    if clips:
        print(f"media: {sum(len(c.frames) for c in clips)} frames "
              f"({sum(int(c.truth.sum()) for c in clips)} with a face)")
    for name in args.settings.split(","):
        run(name, SETTINGS[name], clips, not args.no_sweep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
