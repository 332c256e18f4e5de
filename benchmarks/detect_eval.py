"""Measuring detectors on the shared media: per-frame truth, presence precision / recall, and
synthetic small faces (a real face photo scaled down onto a large background).

Used by benchmarks/bench_detect.py and tests/test_detect_quality.py; ../shared is read, never
copied. Frame truth for face_noface.mov is tests/data/face_noface_truth.json (checked by eye).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np

from pipeline.faces.types import Detections, Detector
from pipeline.faces.persist import iou_matrix, persistent
from pipeline.video import iter_video, read_image

ROOT = Path(__file__).resolve().parents[1]
TRUTH_FILE = ROOT / "tests" / "data" / "face_noface_truth.json"
IMAGE_FACES = {"aflw-test.jpg": 1, "grass.jpg": 0, "single_face.jpg": 1, "multi_face.jpg": 5}
# Photos for synthetic small faces: media path, crop (x0, y0, x1, y1; None = whole) and the face
# box in the crop: BlazeFace's own box at full resolution (brow to chin), checked by eye.
FACE_PHOTOS = {
    "single_face.jpg": ("images/single_face.jpg", None, (180.0, 195.0, 384.0, 399.0)),  # frontal
    "aflw-test.jpg": ("images/aflw-test.jpg", None, (140.0, 197.0, 309.0, 366.0)),  # tilted back
    # turned three-quarter and tilted, black and white; the crop leaves out the seated man
    "einstein.jpg": ("landmarks/einstein.jpg", (200, 100, 700, 560), (141.0, 169.0, 256.0, 284.0)),
}


def face_photo(shared: Path, name: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """(RGB photo, face box) of a FACE_PHOTOS entry."""
    rel, crop, box = FACE_PHOTOS[name]
    img = read_image(shared / "media" / rel)
    if crop is not None:
        img = np.ascontiguousarray(img[crop[1]:crop[3], crop[0]:crop[2]])
    return img, box
CANVAS_HW = (1912, 2560)  # the size of the reported photo whose 15% face was missed
MATCH_IOU = 0.3  # a detection is the placed face when their boxes overlap this much


@dataclass(frozen=True)
class Clip:
    name: str  # file name
    frames: list[np.ndarray]  # RGB (H, W, 3)
    truth: np.ndarray  # (n,) bool: a face is present
    video: bool


def video_truth(name: str, n: int) -> np.ndarray:
    """(n,) bool per decoded frame of a shared video: single_face all, no_face none,
    face_noface from the JSON fixture's inclusive frame ranges."""
    if name == "single_face.mp4":
        return np.ones(n, bool)
    if name == "no_face.mp4":
        return np.zeros(n, bool)
    spec = json.loads(TRUTH_FILE.read_text())
    if spec["video"].rsplit("/", 1)[-1] != name:
        raise KeyError(f"no frame truth for {name}")
    truth = np.zeros(n, bool)
    for a, b in spec["face_ranges"]:
        truth[a:b + 1] = True
    return truth


def load_media(shared: Path) -> list[Clip]:
    """The shared images (one frame each) and videos, decoded, with per-frame truth."""
    clips = [Clip(name, [read_image(shared / "media" / "images" / name)], np.array([n > 0]), False)
             for name, n in IMAGE_FACES.items()]
    for name in ("single_face.mp4", "no_face.mp4", "face_noface.mov"):
        frames = [f for _, f in iter_video(shared / "media" / "videos" / name)]
        clips.append(Clip(name, frames, video_truth(name, len(frames)), True))
    return clips


def detect_all(detector: Detector, frames: Sequence[np.ndarray], batch: int = 16) -> list[Detections]:
    out: list[Detections] = []
    for s in range(0, len(frames), batch):
        out += detector.detect_batch(list(frames[s:s + batch]))
    return out


def above(dets: Sequence[Detections], min_score: float) -> list[Detections]:
    return [d.take(np.flatnonzero(d.scores >= min_score)) for d in dets]


def persist_blocks(dets: Sequence[Detections], n: int, block: int = 64) -> list[Detections]:
    """`persistent` over one video's frames as the faces stage applies it: within blocks of
    `block` rows (faces.chunk_frames)."""
    out = []
    for i, d in enumerate(dets):
        lo, hi = (i // block) * block, min((i // block + 1) * block, len(dets))
        before = [dets[j] for j in range(i - 1, max(lo, i - n + 1) - 1, -1)]
        after = [dets[j] for j in range(i + 1, min(hi, i + n))]
        out.append(persistent(d, before, after, n))
    return out


@dataclass
class Presence:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, found: np.ndarray, truth: np.ndarray) -> None:
        self.tp += int((found & truth).sum())
        self.fp += int((found & ~truth).sum())
        self.fn += int((~found & truth).sum())
        self.tn += int((~found & ~truth).sum())

    @property
    def precision(self) -> float:
        return self.tp / max(self.tp + self.fp, 1)

    @property
    def recall(self) -> float:
        return self.tp / max(self.tp + self.fn, 1)


def place_face(background: np.ndarray, photo: np.ndarray, box: Sequence[float], frac: float,
               centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(canvas, face box): `photo` scaled so its face `box` is `frac` of the background's short
    side tall, pasted (with its own surroundings) so the face centre lands at `centre` (fractions
    of width, height); parts falling outside the canvas are cut."""
    h, w = background.shape[:2]
    box = np.asarray(box, np.float64)
    f = frac * min(h, w) / (box[3] - box[1])
    small = cv2.resize(photo, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    cx, cy = (box[:2] + box[2:]) / 2 * f
    ox, oy = int(round(centre[0] * w - cx)), int(round(centre[1] * h - cy))
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + small.shape[1], w), min(oy + small.shape[0], h)
    canvas = background.copy()
    canvas[y0:y1, x0:x1] = small[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    return canvas, box * f + np.array([ox, oy, ox, oy])


def found_face(dets: Detections, box: np.ndarray) -> bool:
    return bool(len(dets)) and bool((iou_matrix(dets.boxes, box[None])[:, 0] >= MATCH_IOU).any())


def sweep_cases(shared: Path, fracs: Sequence[float]) -> Iterator[tuple[str, float, np.ndarray, np.ndarray]]:
    """(label, frac, canvas, face box) for each background x face photo x size x position.
    Backgrounds: grass.jpg (texture, no face) and a title frame of no_face.mp4 (lettering), both
    stretched to CANVAS_HW."""
    h, w = CANVAS_HW
    grass = read_image(shared / "media" / "images" / "grass.jpg")
    title = dict(iter_video(shared / "media" / "videos" / "no_face.mp4", {60}))[60]
    backgrounds = {"grass": cv2.resize(grass, (w, h)), "title": cv2.resize(title, (w, h))}
    for bg_name, bg in backgrounds.items():
        for photo_name in FACE_PHOTOS:
            photo, box = face_photo(shared, photo_name)
            for frac in fracs:
                for centre in ((0.5, 0.5), (0.2, 0.7)):  # middle; off-centre low left
                    canvas, fbox = place_face(bg, photo, box, frac, centre)
                    yield f"{bg_name}/{photo_name}@{centre}", frac, canvas, fbox


def smallest_found(results: dict[float, list[bool]]) -> tuple[Optional[float], Optional[float]]:
    """(smallest fraction at and above which every case was found, smallest found at all)."""
    fracs = sorted(results, reverse=True)
    every = None
    for f in fracs:
        if not all(results[f]):
            break
        every = f
    anyf = min((f for f in fracs if any(results[f])), default=None)
    return every, anyf
