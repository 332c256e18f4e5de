"""The faces stage's per-block work: decode rows in order, detect in batches, (optionally keep
only faces that persist over neighbouring video rows), choose, align.

`process_rows(rows, faces, detector)` returns the block's arrays (the crop store's per-frame
arrays), error messages naming the file / frame, and seconds spent in decode / detect / align.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Optional

import cv2
import numpy as np

from pipeline.faces.align import AlignError, face_transform, warp
from pipeline.config import FacesConfig, TemporalRule
from pipeline.faces.geometry import choose_face, provided_detections
from pipeline.faces.types import Detections, Detector, FaceStatus
from pipeline.faces.persist import filter_stream
from pipeline.manifest import BOX_COLUMNS
from pipeline.video import MediaError, iter_video, read_image

DETECT_BATCH = 16  # frames per detector call (BlazeFace batches its tiles)
# What a video's own damage raises while decoding (our messages, OpenCV's); any other exception
# is a bug and propagates (it fails the block with its traceback, never becomes data).
DECODE_ERRORS = (MediaError, cv2.error)
# What a detector raises on an image it cannot handle (torch's RuntimeError, shape ValueErrors,
# OpenCV): that frame gets `detector_error`; a TypeError, AttributeError ... is a bug.
DETECTOR_ERRORS = (RuntimeError, ValueError, cv2.error)
READ_THREADS = 4  # image decoding threads (OpenCV releases the GIL while decoding)

# (local row index, RGB image or None, status when the image could not be had, message)
Frame = tuple[int, Optional[np.ndarray], FaceStatus, str]


def _read(path: Optional[str]) -> tuple[Optional[np.ndarray], str]:
    if not path:
        return None, "row has neither an image nor a video"
    try:
        return read_image(path), ""
    except MediaError as e:
        return None, str(e)


def _groups(rows: list[dict]) -> Iterator[tuple[str, Optional[str], list[int]]]:
    """Consecutive rows that share a source: ('images', None, idx) or ('video', path, idx)."""
    kind, path, idx = None, None, []
    for i, r in enumerate(rows):
        k, p = ("video", r["video_path"]) if r.get("video_path") and not r.get("image_path") else ("images", None)
        if idx and (k, p) != (kind, path):
            yield kind, path, idx
            idx = []
        kind, path = k, p
        idx.append(i)
    if idx:
        yield kind, path, idx


def _video_frames(path: str, rows: list[dict], idx: list[int]) -> Iterator[Frame]:
    wanted: dict[int, list[int]] = {}
    for i in idx:
        wanted.setdefault(int(rows[i]["video_frame"]), []).append(i)
    seen: set[int] = set()
    info: dict = {}
    try:
        for f, img in iter_video(path, set(wanted), info):
            seen.add(f)
            for i in wanted[f]:
                yield i, img, FaceStatus.OK, ""
    except DECODE_ERRORS as e:  # the video's own fault: named, counted; anything else is a bug
        for f in sorted(set(wanted) - seen):
            for i in wanted[f]:
                yield i, None, FaceStatus.VIDEO_UNREADABLE, f"{e}"
        return
    missing = sorted(set(wanted) - seen)
    n = info.get("decoded", 0)
    for f in missing:
        msg = (f"{path}: frame {f} is beyond the video's end ({n} decodable frames, the last is "
               f"{n - 1}); the video is shorter than its labels ({len(missing)} labelled frames "
               "missing)")
        for i in wanted[f]:
            yield i, None, FaceStatus.FRAME_MISSING, msg


def iter_frames(rows: list[dict], pool: ThreadPoolExecutor) -> Iterator[Frame]:
    """Every row once, in row order, with its decoded image or the reason it has none."""
    for kind, path, idx in _groups(rows):
        if kind == "video":
            yield from _video_frames(path, rows, idx)
            continue
        for w in range(0, len(idx), DETECT_BATCH):  # a window at a time: bounded memory
            part = idx[w:w + DETECT_BATCH]
            paths = [rows[i].get("image_path") for i in part]
            for i, (img, err) in zip(part, pool.map(_read, paths)):
                yield (i, img, FaceStatus.OK, "") if img is not None else (i, None, FaceStatus.UNREADABLE_IMAGE, err)


def _empty(n: int, size: int) -> dict[str, np.ndarray]:
    return {"crops": np.zeros((n, size, size, 3), np.uint8), "success": np.zeros(n, bool),
            "reason": np.zeros(n, np.uint8), "boxes": np.full((n, 4), np.nan, np.float32),
            "keypoints": np.full((n, 5, 2), np.nan, np.float32),
            "scores": np.full(n, np.nan, np.float32), "n_faces": np.zeros(n, np.int16)}


def _detect(detector: Optional[Detector], rows: list[dict], batch: list[Frame],
            errors: list[str]) -> list[Optional[Detections]]:
    """Detections per batch entry (None where the frame has no image or the detector failed)."""
    if detector is None:  # provided landmarks / boxes
        out = []
        for i, img, _, _ in batch:
            r = rows[i]
            box = [r.get(c) for c in BOX_COLUMNS]
            box = None if any(v is None for v in box) else box
            out.append(None if img is None else provided_detections(r.get("landmarks"), box))
        return out
    imgs = [img for _, img, _, _ in batch if img is not None]
    try:
        found = iter(detector.detect_batch(imgs)) if imgs else iter(())
        return [None if img is None else next(found) for _, img, _, _ in batch]
    except DETECTOR_ERRORS as e:  # isolate the frame that fails, keep the others
        first = next((i for i, img, _, _ in batch if img is not None), 0)
        errors.append(f"{_where(rows[first])} and the next {len(imgs) - 1} frames: the detector "
                      f"failed on the batch ({type(e).__name__}: {e}); detected frame by frame")
        out = []
        for i, img, _, _ in batch:
            try:
                out.append(None if img is None else detector.detect(img))
            except DETECTOR_ERRORS as e1:
                errors.append(f"{_where(rows[i])}: detector error: {type(e1).__name__}: {e1}")
                out.append(None)
        return out


def _where(r: dict) -> str:
    return r.get("image_path") or f"{r.get('video_path')} frame {r.get('video_frame')}"


# (local row index, RGB image or None, status, message, detections or None)
Detected = tuple[int, Optional[np.ndarray], FaceStatus, str, Optional[Detections]]


def _detected(frames: Iterator[Frame], rows: list[dict], faces: FacesConfig, detector: Optional[Detector],
              errors: list[str], timing: dict[str, float]) -> Iterator[Detected]:
    """Every frame with its detections, detected DETECT_BATCH frames at a time."""
    batch: list[Frame] = []

    def flush() -> Iterator[Detected]:
        t = time.perf_counter()
        dets = _detect(detector, rows, batch, errors)
        timing["detect"] += time.perf_counter() - t
        for (i, img, status, msg), d in zip(batch, dets):
            if img is not None and d is None:
                status = FaceStatus.DETECTOR_ERROR
            yield i, img, status, msg, d

    while True:
        t = time.perf_counter()
        item = next(frames, None)
        timing["decode"] += time.perf_counter() - t
        if item is None:
            break
        i, img, status, msg = item
        if img is not None and min(img.shape[:2]) < faces.min_face_px:
            item = (i, None, FaceStatus.TOO_SMALL, "")  # a tiny image cannot hold a keepable face
        batch.append(item)
        if sum(b[1] is not None for b in batch) >= DETECT_BATCH:
            yield from flush()
            batch = []
    if batch:
        yield from flush()


def _same_video(rows: list[dict], i: int, sequence_images: bool) -> bool:
    """Whether row i continues row i-1's video: frames of one video file, or of one video_id
    when its images are a video's frames. Unrelated stills are never linked by tracking."""
    a, b = rows[i - 1], rows[i]
    if a["video_id"] != b["video_id"]:
        return False
    if b.get("video_path") and not b.get("image_path"):
        return a.get("video_path") == b["video_path"]
    return sequence_images and bool(b.get("image_path"))


def process_rows(rows: list[dict], faces: FacesConfig, detector: Optional[Detector],
                 sequence_images: bool = False) -> tuple[dict[str, np.ndarray], list[str], dict[str, float]]:
    """The block's arrays, error messages naming file and frame, and seconds per part.

    sequence_images: consecutive image rows of one video_id are frames of one video, so
    `faces.rule: track` follows the face through them; otherwise only video files are tracked.
    """
    n, size = len(rows), faces.size
    data = _empty(n, size)
    errors: list[str] = []
    timing = {"decode": 0.0, "detect": 0.0, "align": 0.0}
    prev: Optional[tuple[int, np.ndarray]] = None  # (local row, box) of the last kept face

    with ThreadPoolExecutor(READ_THREADS) as pool:
        stream = _detected(iter_frames(rows, pool), rows, faces, detector, errors, timing)
        if faces.temporal is TemporalRule.PERSIST and detector is not None:
            stream = filter_stream(stream, dets=lambda x: x[4],
                                   video=lambda x: rows[x[0]].get("video_path") or None,
                                   replace=lambda x, d: (*x[:4], d), n=faces.persist_frames)
        for i, img, status, msg, d in stream:
            t = time.perf_counter()
            if d is not None:
                data["n_faces"][i] = len(d)
                same_track = prev is not None and prev[0] == i - 1 and _same_video(rows, i, sequence_images)
                k, status = choose_face(d, faces.rule, prev[1] if same_track else None, faces.min_face_px)
                if k is not None:
                    try:
                        m = face_transform(d.keypoints[k], d.boxes[k], size=size,
                                           eye_distance=faces.eye_distance, margin=faces.box_margin)
                        data["crops"][i] = warp(img, m, size)
                        data["boxes"][i], data["keypoints"][i] = d.boxes[k], d.keypoints[k]
                        data["scores"][i] = d.scores[k]
                        data["success"][i] = True
                        prev = (i, d.boxes[k])
                    except AlignError as e:
                        status, msg = FaceStatus.ALIGN_FAILED, f"{_where(rows[i])}: {e}"
            data["reason"][i] = int(status)
            if status not in (FaceStatus.OK, FaceStatus.NO_FACE, FaceStatus.TOO_SMALL) and msg:
                if msg not in errors:
                    errors.append(msg)
            timing["align"] += time.perf_counter() - t
    return data, errors, timing
