"""AU prediction on a stream of frames: detect, choose or track faces, crop, FAN, head.

`Engine` holds a bundle's frozen FAN and head. `predict_stream(frames, ...)` turns an iterator
of (index, RGB image) into one `Row` per face per frame (or one `success = False` row for a
frame without a face), in frame order, with bounded memory whatever the video's length. A
frame that could not be decoded comes in as an `Unreadable` and gets its `success = False` row
with the reason; its neighbours treat it as a frame without a face.

- static heads are answered frame by frame;
- temporal heads, `cached`: each face crop's features are kept for 2T + 1 frames, so frame t is
  answered once frame t + T is in (a neighbour that does not exist, or has no face of that id,
  is replaced by frame t itself, as the reference does);
- temporal heads, `exact`: decoded frames are kept for 2T + 1 frames and the neighbours t - T,
  t + T are warped onto frame t's crop with the 5-point similarity the reference uses; three
  FAN passes per frame.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
import torch

from pipeline.faces.align import (AlignError, face_transform, neighbour_transform,
                            reference_centre_transform, transform_points, warp)
from pipeline.predict.bundle import BundleSpec, load_backbone_of, load_head_of
from pipeline.quantise import roundtrip
from pipeline.config import CropMode, FeatureDtype, TemporalMode
from pipeline.faces.types import Detections, Detector
from pipeline.faces.tracking import IouTracker, largest

DETECT_BATCH = 16  # frames per detector call
PIXEL_SCALE = 255.0


@dataclass
class Face:
    frame: int  # 0-based frame index
    face_id: int
    score: float
    box: np.ndarray  # (4,) source pixels
    kp: np.ndarray  # (5, 2) source pixels, NaN where the detector has none
    m: np.ndarray  # (2, 3) source -> crop
    crop: np.ndarray  # (S, S, 3) uint8


NO_FACE = "no face"  # the reason of a success = False row whose frame was read


@dataclass(frozen=True)
class Unreadable:
    """In place of a frame's image: it could not be decoded (the reason names file and why)."""

    reason: str


@dataclass
class Row:
    frame: int
    face_id: int
    success: bool
    score: float = float("nan")
    box: np.ndarray = field(default_factory=lambda: np.full(4, np.nan, np.float32))
    kp: np.ndarray = field(default_factory=lambda: np.full((5, 2), np.nan, np.float32))
    probs: Optional[np.ndarray] = None  # (L,) probabilities
    crop: Optional[np.ndarray] = None  # (S, S, 3) uint8, kept only when asked for
    reason: str = ""  # why success is False (NO_FACE, or the decode error)


class Engine:
    """A bundle's FAN and head on one device; features and probabilities of crops."""

    def __init__(self, folder, spec: BundleSpec, *, temporal: TemporalMode, tta_flip: bool,
                 batch_size: int = 8, device: str = "cpu", allow_random_weights: bool = False):
        self.spec, self.temporal, self.tta = spec, TemporalMode(temporal), tta_flip
        self.device = torch.device(device)
        self.fan, self.weights_id = load_backbone_of(folder, spec, allow_random_weights)
        self.fan = self.fan.to(self.device)
        self.head = load_head_of(folder, spec).to(self.device)
        self.is_temporal = bool(getattr(self.head, "temporal", False))
        self.T, self.batch = spec.temporal_offset, batch_size
        self.timing = {"fan": 0.0, "head": 0.0}

    def transform(self, box: np.ndarray, kp: np.ndarray) -> np.ndarray:
        c = self.spec.crop
        if c.mode is CropMode.REFERENCE:
            return reference_centre_transform(box, c.size)
        return face_transform(kp, box, size=c.size, eye_distance=c.eye_distance, margin=c.box_margin)

    @torch.inference_mode()
    def features(self, crops: np.ndarray) -> torch.Tensor:
        """(B, 768, h, w) float16 features of crops (B, S, S, 3) uint8; with TTA flip, the
        flipped crops' features follow as a second block: (2B, ...)."""
        t0 = time.perf_counter()
        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2)
        if self.tta:
            x = torch.cat([x, x.flip(-1)])
        out = []
        for i in range(0, len(x), self.batch):
            xb = x[i:i + self.batch].to(self.device).float().div_(PIXEL_SCALE)
            f = self.fan(xb)  # (b, 768, h, w)
            if self.spec.feature_dtype is FeatureDtype.UINT8:  # as the head's training cache
                f = roundtrip(f)
            out.append(f.to("cpu", torch.float16))
        self.timing["fan"] += time.perf_counter() - t0
        return torch.cat(out) if out else torch.zeros(0)

    @torch.inference_mode()
    def probs(self, f_t: torch.Tensor, f_prev=None, f_next=None) -> np.ndarray:
        """(B, L) probabilities; with TTA flip the inputs hold both halves and the logits of a
        crop and its flip are averaged."""
        t0 = time.perf_counter()
        args = [f_t] if not self.is_temporal else [f_t, f_prev, f_next]
        logits = self.head(*[a.to(self.device).float() for a in args])
        if self.tta:
            half = len(logits) // 2
            logits = (logits[:half] + logits[half:]) / 2
        self.timing["head"] += time.perf_counter() - t0
        return torch.sigmoid(logits).cpu().numpy()


def _faces_of(engine: Engine, index: int, image: np.ndarray, dets: Detections, pick) -> list[Face]:
    out = []
    for face_id, k in pick:
        try:
            m = engine.transform(dets.boxes[k], dets.keypoints[k])
        except AlignError:
            continue
        out.append(Face(index, face_id, float(dets.scores[k]), dets.boxes[k].copy(),
                        dets.keypoints[k].copy(), m, warp(image, m, engine.spec.crop.size)))
    return out


def _pair(feats: torch.Tensor, n: int, i: int) -> torch.Tensor:
    """Item i of a features() result of n crops, with its flip when TTA doubled the block."""
    return feats[[i, i + n]] if len(feats) == 2 * n else feats[i:i + 1]


def predict_stream(frames: Iterator[tuple[int, np.ndarray]], engine: Engine, detector: Detector,
                   *, all_faces: bool = False, min_face_px: float = 24, keep_crops: bool = False,
                   timing: Optional[dict] = None) -> Iterator[Row]:
    """Rows in frame order (see the module docstring); `timing` gets decode and detect seconds."""
    timing = timing if timing is not None else {}
    for k in ("decode", "detect", "crop"):
        timing.setdefault(k, 0.0)
    tracker = IouTracker(min_face_px=min_face_px) if all_faces else None
    T = engine.T if engine.is_temporal else 0
    pending: deque[tuple[int, list[Face]]] = deque()  # frames not answered yet
    feats: dict[tuple[int, int], torch.Tensor] = {}  # (face id, frame) -> features (cached)
    images: dict[int, tuple[np.ndarray, list[Face]]] = {}  # frame -> (image, faces) (exact)
    unreadable: dict[int, str] = {}  # frame -> reason, until its row is out
    last = -1
    source = iter(frames)
    done = False
    while not done:
        t0 = time.perf_counter()
        chunk = []
        for item in source:
            chunk.append(item)
            if len(chunk) == DETECT_BATCH:
                break
        done = len(chunk) < DETECT_BATCH
        timing["decode"] += time.perf_counter() - t0
        for index, image in chunk:
            if isinstance(image, Unreadable):
                unreadable[index] = image.reason
        chunk_ok = [(i, img) for i, img in chunk if i not in unreadable]
        if chunk:
            t0 = time.perf_counter()
            dets = iter(detector.detect_batch([img for _, img in chunk_ok]) if chunk_ok else [])
            timing["detect"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            new: list[Face] = []
            for index, image in chunk:
                if index in unreadable:
                    pending.append((index, []))
                    last = index
                    continue
                d = next(dets)
                pick = tracker.update(index, d) if tracker else [(0, k) for k in largest(d, min_face_px)]
                faces = _faces_of(engine, index, image, d, pick)
                pending.append((index, faces))
                new += faces
                if engine.temporal is TemporalMode.EXACT and T:
                    images[index] = (image, faces)
                last = index
            timing["crop"] += time.perf_counter() - t0
            if new and (T == 0 or engine.temporal is TemporalMode.CACHED):
                f = engine.features(np.stack([x.crop for x in new]))
                for i, x in enumerate(new):
                    feats[(x.face_id, x.frame)] = _pair(f, len(new), i)
        ready = []
        while pending and (done or pending[0][0] + T <= last):
            ready.append(pending.popleft())
        yield from _answer(engine, ready, feats, images, T, keep_crops, unreadable)
        oldest = pending[0][0] - T if pending else last + 1
        for key in [k for k in feats if k[1] < oldest]:
            del feats[key]
        for key in [k for k in images if k < oldest]:
            del images[key]


def _answer(engine: Engine, ready, feats, images, T: int, keep_crops: bool,
            unreadable: dict[int, str]) -> Iterator[Row]:
    faces = [x for _, fs in ready for x in fs]
    probs: dict[tuple[int, int], np.ndarray] = {}
    for i in range(0, len(faces), engine.batch):
        part = faces[i:i + engine.batch]
        if engine.temporal is TemporalMode.EXACT and T:
            trip = engine.features(np.stack([c for x in part for c in _exact_crops(engine, x, images, T)]))
            n = 3 * len(part)
            sel = lambda j: torch.cat([_pair(trip, n, 3 * q + j) for q in range(len(part))])  # noqa: E731
            p = engine.probs(*_regroup([sel(1), sel(0), sel(2)], engine.tta))
        else:
            def get(x, dt):
                return feats.get((x.face_id, x.frame + dt), feats[(x.face_id, x.frame)])

            cols = [[get(x, dt) for x in part] for dt in ((0, -T, T) if T else (0,))]
            p = engine.probs(*_regroup([torch.cat(c) for c in cols], engine.tta))
        for x, row in zip(part, p):
            probs[(x.face_id, x.frame)] = row
    for index, fs in ready:
        if not fs:
            yield Row(index, 0, False, reason=unreadable.pop(index, NO_FACE))
        for x in fs:
            yield Row(index, x.face_id, True, x.score, x.box, x.kp, probs[(x.face_id, x.frame)],
                      x.crop if keep_crops else None)


def _regroup(blocks: list[torch.Tensor], tta: bool) -> list[torch.Tensor]:
    """Blocks hold (orig, flip) pairs per item; the head wants [origs..., flips...]."""
    if not tta:
        return blocks
    return [torch.cat([b[0::2], b[1::2]]) for b in blocks]


def _exact_crops(engine: Engine, x: Face, images, T: int) -> list[np.ndarray]:
    """[t-T, t, t+T] crops of a face for the exact mode: neighbours warped onto frame t's crop."""
    target = transform_points(x.kp, x.m)
    out = []
    for dt in (-T, 0, T):
        crop = x.crop
        if dt and (x.frame + dt) in images:
            image, faces = images[x.frame + dt]
            same = [f for f in faces if f.face_id == x.face_id]
            if same and np.isfinite(same[0].kp).all() and np.isfinite(x.kp).all():
                crop = warp(image, neighbour_transform(same[0].kp, target), engine.spec.crop.size)
        out.append(crop)
    return out
