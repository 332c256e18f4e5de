"""AU prediction on a stream of frames: detect, choose or track faces, crop, FAN, head.

`predict_stream(frames, engine, detector, ...)` turns an iterator of (index, RGB image) into
one `Row` per face per frame (or one `success = False` row for a frame without a face), in frame
order, with bounded memory whatever the video's length; `engine` (pipeline/predict/engine.py)
holds the bundle's FAN and head on their runtime. Decoding and detection run on a background
thread at most PREFETCH_CHUNKS chunks ahead (a bounded queue), so they overlap the FAN, on machines
of more than SERIAL_CORES cores (on fewer, in the FAN's thread: they would compete). A frame
that could not be decoded comes in as an `Unreadable` and gets its `success = False` row with
the reason; its neighbours treat it as a frame without a face. Face rows carry the 68 landmarks
(source pixels, from the FAN's heatmaps) and the head pose (pipeline/faces/pose.py).

- static heads are answered frame by frame;
- temporal heads, `cached`: each face crop's features are kept for 2T + 1 frames, so frame t is
  answered once frame t + T is in (a neighbour that does not exist, or has no face of that id,
  is replaced by frame t itself, as the reference does);
- temporal heads, `exact`: decoded frames are kept for 2T + 1 frames and the neighbours t - T,
  t + T are warped onto frame t's crop with the 5-point similarity the reference uses; three
  FAN passes per frame;
- `every` N: rows only for frames 0, N, 2N, ...; their neighbours t -+ T are still detected and
  (cached) passed through the FAN, the other frames are dropped (`needed(index, every, T)` says
  which: the caller need not decode the others, stages/predict.py does not);
- `gate` (videos): BlazeFace's finer tiles on face-free frames only as pipeline/faces/gate.py
  allows.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
import torch

from pipeline.config import TemporalMode
from pipeline.faces import landmarks as lm
from pipeline.faces.align import AlignError, neighbour_transform, transform_points, warp
from pipeline.faces.gate import FineGate
from pipeline.faces.pose import head_pose
from pipeline.faces.types import Detections, Detector
from pipeline.faces.tracking import IouTracker, largest
from pipeline.models.fan import N_LANDMARKS
from pipeline.predict.engine import Engine  # noqa: F401  (its home before engine.py)
from pipeline.predict.runtime import cores

DETECT_BATCH = 16  # frames per detector call
PREFETCH_CHUNKS = 2  # detected chunks decoded ahead of the FAN on a background thread
# Machines of up to this many cores decode and detect in the FAN's thread: there the thread
# takes a core from the FAN's own two threads and costs more than it hides, or breaks even
# (measured on two 2-core machines, docs/predict.md "Runtimes": onnx 4.02 frames/s serial
# against 3.46 with the thread; 6.92 against 6.60, and 6.72 against 6.77).
SERIAL_CORES = 2
QUEUE_POLL_S = 0.5


@dataclass
class Face:
    frame: int  # 0-based frame index
    face_id: int
    score: float
    box: np.ndarray  # (4,) source pixels
    kp: np.ndarray  # (5, 2) source pixels, NaN where the detector has none
    m: np.ndarray  # (2, 3) source -> crop
    crop: np.ndarray  # (S, S, 3) uint8
    size: tuple[int, int] = (0, 0)  # the frame's (width, height)
    landmarks: Optional[np.ndarray] = None  # (68, 2) source pixels, from the FAN's heatmaps


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
    landmarks: np.ndarray = field(default_factory=lambda: np.full((N_LANDMARKS, 2), np.nan, np.float32))
    pose: np.ndarray = field(default_factory=lambda: np.full(6, np.nan))  # Tx, Ty, Tz mm; Rx, Ry, Rz rad
    reason: str = ""  # why success is False (NO_FACE, or the decode error)


def _faces_of(engine: Engine, index: int, image: np.ndarray, dets: Detections, pick) -> list[Face]:
    out = []
    for face_id, k in pick:
        try:
            m = engine.transform(dets.boxes[k], dets.keypoints[k])
        except AlignError:
            continue
        out.append(Face(index, face_id, float(dets.scores[k]), dets.boxes[k].copy(),
                        dets.keypoints[k].copy(), m, warp(image, m, engine.spec.crop.size),
                        (image.shape[1], image.shape[0])))
    return out


def _set_landmarks(faces: list[Face], points: np.ndarray) -> None:
    """points (len(faces), 68, 2) crop pixels -> each face's landmarks in source pixels."""
    for x, p in zip(faces, points):
        x.landmarks = lm.to_source(p, x.m)


def _pair(feats: torch.Tensor, n: int, i: int) -> torch.Tensor:
    """Item i of a features() result of n crops, with its flip when TTA doubled the block."""
    return feats[[i, i + n]] if len(feats) == 2 * n else feats[i:i + 1]


def needed(index: int, every: int, T: int) -> tuple[bool, bool]:
    """(sampled, needed) of a frame under `every`: needed = sampled, or the t -+ T neighbour of
    a sampled frame t (temporal heads read true neighbours of the source video)."""
    sampled = index % every == 0
    near = T > 0 and ((index + T) % every == 0 or (index >= T and (index - T) % every == 0))
    return sampled, sampled or near


def _chunks(frames, detector: Detector, gate: Optional[FineGate], every: int, T: int,
            timing: dict) -> Iterator[list]:
    """Chunks of up to DETECT_BATCH needed frames: [(index, image or Unreadable, sampled,
    Detections or None)], decoded and detected (`timing` gets their seconds)."""
    source = iter(frames)
    done = False
    while not done:
        t0 = time.perf_counter()
        chunk = []
        for index, image in source:
            sampled, want = needed(index, every, T)
            if want:
                chunk.append((index, image, sampled))
                if len(chunk) == DETECT_BATCH:
                    break
        else:
            done = True
        timing["decode"] += time.perf_counter() - t0
        ok = [img for _, img, _ in chunk if not isinstance(img, Unreadable)]
        t0 = time.perf_counter()
        dets = iter(detector.detect_video_batch(ok, gate) if ok else [])
        timing["detect"] += time.perf_counter() - t0
        yield [(i, img, s, None if isinstance(img, Unreadable) else next(dets))
               for i, img, s in chunk]


def _prefetched(chunks: Iterator[list], depth: int) -> Iterator[list]:
    """`chunks` produced on a background thread, at most `depth` ahead (memory stays flat):
    decoding and detection overlap the FAN. depth 0: in this thread."""
    if depth <= 0:
        yield from chunks
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def produce():
        try:
            for c in chunks:
                while not stop.is_set():
                    try:
                        q.put(c, timeout=QUEUE_POLL_S)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    worker = threading.Thread(target=produce, daemon=True, name="decode-detect")
    worker.start()
    try:
        while (item := q.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=QUEUE_POLL_S * 4)


def predict_stream(frames: Iterator[tuple[int, np.ndarray]], engine: Engine, detector: Detector,
                   *, all_faces: bool = False, min_face_px: float = 24, keep_crops: bool = False,
                   timing: Optional[dict] = None, every: int = 1, gate: Optional[FineGate] = None,
                   prefetch: Optional[int] = None) -> Iterator[Row]:
    """Rows in frame order (see the module docstring); `timing` gets decode and detect seconds.
    every: rows only for frames 0, N, 2N, ... (their neighbours are still read); gate: the
    video's detector gate (pipeline/faces/gate.py), None for independent images."""
    timing = timing if timing is not None else {}
    for k in ("decode", "detect", "crop"):
        timing.setdefault(k, 0.0)
    tracker = IouTracker(min_face_px=min_face_px) if all_faces else None
    T = engine.T if engine.is_temporal else 0
    pending: deque[tuple[int, list[Face], bool]] = deque()  # frames not answered yet
    feats: dict[tuple[int, int], torch.Tensor] = {}  # (face id, frame) -> features (cached)
    images: dict[int, tuple[np.ndarray, list[Face]]] = {}  # frame -> (image, faces) (exact)
    unreadable: dict[int, str] = {}  # frame -> reason, until its row is out
    last = -1
    depth = (PREFETCH_CHUNKS if cores() > SERIAL_CORES else 0) if prefetch is None else prefetch
    source = _prefetched(_chunks(frames, detector, gate, every, T, timing), depth)
    chunk: list = []
    while True:
        chunk = next(source, None)
        done = chunk is None
        t0 = time.perf_counter()
        new: list[Face] = []
        for index, image, sampled, d in chunk or []:
            last = index
            if d is None:
                unreadable[index] = image.reason
                pending.append((index, [], sampled))
                continue
            pick = tracker.update(index, d) if tracker else [(0, k) for k in largest(d, min_face_px)]
            faces = _faces_of(engine, index, image, d, pick)
            pending.append((index, faces, sampled))
            new += faces
            if engine.temporal is TemporalMode.EXACT and T:
                images[index] = (image, faces)
        timing["crop"] += time.perf_counter() - t0
        if new and (T == 0 or engine.temporal is TemporalMode.CACHED):
            f, pts = engine.features(np.stack([x.crop for x in new]))
            _set_landmarks(new, pts)
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
        if done:
            return


def _answer(engine: Engine, ready, feats, images, T: int, keep_crops: bool,
            unreadable: dict[int, str]) -> Iterator[Row]:
    faces = [x for _, fs, sampled in ready if sampled for x in fs]
    probs: dict[tuple[int, int], np.ndarray] = {}
    for i in range(0, len(faces), engine.batch):
        part = faces[i:i + engine.batch]
        if engine.temporal is TemporalMode.EXACT and T:
            trip, pts = engine.features(np.stack([c for x in part for c in _exact_crops(engine, x, images, T)]))
            _set_landmarks(part, pts[1::3])
            n = 3 * len(part)
            p = engine.probs_of([[_pair(trip, n, 3 * q + j) for q in range(len(part))]
                                 for j in (1, 0, 2)])  # crops t-T, t, t+T -> head inputs t, t-T, t+T
        else:
            def get(x, dt):
                return feats.get((x.face_id, x.frame + dt), feats[(x.face_id, x.frame)])

            p = engine.probs_of([[get(x, dt) for x in part] for dt in ((0, -T, T) if T else (0,))])
        for x, row in zip(part, p):
            probs[(x.face_id, x.frame)] = row
    for index, fs, sampled in ready:
        if not sampled:
            unreadable.pop(index, None)
            continue
        if not fs:
            yield Row(index, 0, False, reason=unreadable.pop(index, NO_FACE))
        for x in fs:
            yield Row(index, x.face_id, True, x.score, x.box, x.kp, probs[(x.face_id, x.frame)],
                      x.crop if keep_crops else None, x.landmarks, head_pose(x.landmarks, *x.size))


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
