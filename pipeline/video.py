"""Image and video decoding with OpenCV (shipped with face-alignment's dependencies).

Images come back RGB uint8 (H, W, 3) whatever their channels; videos are decoded as a stream,
one frame at a time, so memory does not grow with video length.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from pipeline.errors import InputError


class MediaError(InputError):
    """A file that cannot be decoded; the message names it."""


def to_rgb(img: np.ndarray, where: str) -> np.ndarray:
    if img.ndim == 2:  # grayscale
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 4:  # BGRA
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise MediaError(f"{where}: unsupported image shape {img.shape}")


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; MediaError naming the file when missing, corrupt or truncated."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: image not found")
    if path.is_dir():
        raise MediaError(f"{path}: is a folder, not an image file")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:  # permissions, I/O errors: this frame fails, not its block
        raise MediaError(f"{path}: cannot read the image: {e.strerror or e}") from None
    if data.size == 0:
        raise MediaError(f"{path}: empty file")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise MediaError(f"{path}: not a decodable image (corrupt or truncated)")
    if img.dtype != np.uint8:  # 16-bit PNGs and the like
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(float(img.max()), 1.0))
    return to_rgb(img, str(path))


def frame_count(path: str | Path) -> int:
    """Frames a video holds, as its container reports them (0 when unreadable)."""
    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()


MS_PER_S = 1000.0
VIDEO_CODEC = "mp4v"  # OpenCV's own MPEG-4 writer: no external encoder needed


def write_video(frames: Iterable[np.ndarray], path: str | Path, fps: float) -> int:
    """RGB uint8 frames (H, W, 3) as an mp4 at `path`, written beside it and renamed into place
    once every frame is in (the temporary name keeps `.mp4`: OpenCV picks the container from
    it). Returns the frames written; with none, nothing is written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    writer, n = None, 0
    try:
        for rgb in frames:
            if writer is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*VIDEO_CODEC), fps,
                                         (rgb.shape[1], rgb.shape[0]))
            writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            n += 1
        if writer is not None:
            writer.release()
            writer = None
            tmp.replace(path)
    finally:
        if writer is not None:
            writer.release()
        tmp.unlink(missing_ok=True)
    return n


def video_fps(path: str | Path) -> float:
    cap = cv2.VideoCapture(str(path))
    try:
        return float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        cap.release()


def iter_video(path: str | Path, wanted: set[int] | Callable[[int], bool] | None = None,
               info: dict | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Stream (0-based index, RGB frame) pairs; only `wanted` indices are decoded into images and
    yielded: a set (the stream stops after its largest) or a predicate on the index (the stream
    runs to the end). The others are only grabbed (demuxed and decoded into the decoder's
    buffer, never retrieved, converted to RGB or copied out).

    info: filled with {"decoded": frames the decoder delivered} as the stream goes (when it
    ends early, the video holds exactly that many decodable frames), and {"times": {index:
    seconds}}: each frame's presentation time from the container (grabbed ones too) (a variable-frame-rate
    video's frames are not index / fps apart).
    """
    path = Path(path)
    info = {} if info is None else info
    info["decoded"] = 0
    times = info.setdefault("times", {})
    if not path.exists():
        raise MediaError(f"{path}: video not found")
    if path.is_dir():
        raise MediaError(f"{path}: is a folder, not a video file")
    if not os.access(path, os.R_OK):
        raise MediaError(f"{path}: video not readable (permissions)")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: zero-length video")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise MediaError(f"{path}: not a decodable video")
    keep = wanted.__contains__ if isinstance(wanted, (set, frozenset)) else wanted
    last = max(wanted) if isinstance(wanted, (set, frozenset)) and wanted else None
    try:
        i = 0
        while True:
            if last is not None and i > last:
                break
            if keep is not None and not keep(i):
                if not cap.grab():
                    break
                info["decoded"] = i + 1
                times[i] = cap.get(cv2.CAP_PROP_POS_MSEC) / MS_PER_S  # the timeline stays whole
            else:
                ok, frame = cap.read()
                if not ok:
                    break
                info["decoded"] = i + 1
                times[i] = cap.get(cv2.CAP_PROP_POS_MSEC) / MS_PER_S  # this frame's pts
                yield i, to_rgb(frame, f"{path} frame {i}")
            i += 1
    finally:
        cap.release()
