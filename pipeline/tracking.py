"""Faces across the frames of a video: the largest face, or every face with a stable id.

`IouTracker` links each frame's detections to the tracks of the frames before by box overlap
(greedy, highest IoU first). A face keeps its id while it is seen again within `max_gap`
frames; a face that leaves for longer, or a new face, gets a new id (ids are never reused).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.detect import Detections

MIN_IOU = 0.3  # overlap that links a detection to a track
MAX_GAP = 10  # frames a track may go unseen and keep its id


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of boxes x0, y0, x1, y1."""
    a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def largest(dets: Detections, min_face_px: float) -> list[int]:
    """Index of the largest face (ties: highest score) at least `min_face_px` tall, or none."""
    if len(dets) == 0:
        return []
    wh = dets.boxes[:, 2:] - dets.boxes[:, :2]
    ok = np.flatnonzero(wh.max(1) >= min_face_px)
    if ok.size == 0:
        return []
    best = np.lexsort((-dets.scores[ok], -wh[ok].prod(1)))[0]
    return [int(ok[best])]


@dataclass
class _Track:
    id: int
    box: np.ndarray
    last: int


class IouTracker:
    def __init__(self, min_iou: float = MIN_IOU, max_gap: int = MAX_GAP, min_face_px: float = 0):
        self.min_iou, self.max_gap, self.min_face_px = min_iou, max_gap, min_face_px
        self.tracks: list[_Track] = []
        self.next_id = 0

    def update(self, frame: int, dets: Detections) -> list[tuple[int, int]]:
        """(face id, detection index) for the faces of this frame, in id order."""
        keep = [k for k in range(len(dets))
                if (dets.boxes[k, 2:] - dets.boxes[k, :2]).max() >= self.min_face_px]
        self.tracks = [t for t in self.tracks if frame - t.last <= self.max_gap]
        pairs: list[tuple[int, int]] = []
        if keep and self.tracks:
            m = iou(np.stack([t.box for t in self.tracks]), dets.boxes[keep])  # (T, K)
            while m.size and m.max() >= self.min_iou:
                ti, ki = np.unravel_index(int(m.argmax()), m.shape)
                pairs.append((ti, keep[ki]))
                m[ti, :], m[:, ki] = -1, -1
        out = []
        used = set()
        for ti, k in pairs:
            t = self.tracks[ti]
            t.box, t.last = dets.boxes[k].copy(), frame
            out.append((t.id, k))
            used.add(k)
        for k in keep:
            if k not in used:  # a new face
                self.tracks.append(_Track(self.next_id, dets.boxes[k].copy(), frame))
                out.append((self.next_id, k))
                self.next_id += 1
        return sorted(out)
