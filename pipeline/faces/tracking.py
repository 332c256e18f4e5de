"""Faces across the frames of a video: the largest face, or every face with a stable id.

`IouTracker` links each frame's detections to the tracks of the frames before by box overlap
(greedy, highest IoU first). A face keeps its id while it is seen again within `max_gap`
frames; a face that leaves for longer, or a new face, gets a new id (ids are never reused).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.faces.geometry import big_enough, iou_matrix, largest_of
from pipeline.faces.types import Detections

MIN_IOU = 0.3  # overlap that links a detection to a track
MAX_GAP = 10  # frames a track may go unseen and keep its id


def largest(dets: Detections, min_face_px: float) -> list[int]:
    """Index of the largest face (ties: highest score) at least `min_face_px` tall, or none."""
    ok = big_enough(dets, min_face_px)
    return [largest_of(dets, ok)] if ok.size else []


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
        keep = [int(k) for k in big_enough(dets, self.min_face_px)]
        self.tracks = [t for t in self.tracks if frame - t.last <= self.max_gap]
        pairs: list[tuple[int, int]] = []
        if keep and self.tracks:
            m = iou_matrix(np.stack([t.box for t in self.tracks]), dets.boxes[keep])  # (T, K)
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
