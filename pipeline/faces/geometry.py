"""Face geometry shared by detectors, the faces stage and prediction: box overlap, suppression,
plausibility, keypoints from landmarks, and which face of a frame to keep."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from pipeline.config import FaceRule
from pipeline.faces.align import MOUTH_HALF_WIDTH
from pipeline.faces.types import Detections, FaceStatus

NMS_IOU = 0.3  # BlazeFace's own suppression threshold, reused to merge tiles
# Real faces have eyes 0.33-0.46 box widths apart (BlazeFace on the shared media); false
# positives on sky and lettering go down to 0.09.
MIN_EYES_PER_BOX = 0.2


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of boxes a (m, 4) and b (n, 4), x0 y0 x1 y1."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)[:, None]
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)[None, :]
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        order = rest[iou_matrix(boxes[i:i + 1], boxes[rest])[0] <= iou]
    return np.asarray(keep, dtype=np.int64)


def plausible(dets: Detections, max_roll_deg: float) -> Detections:
    """Faces whose eye line is tilted at most `max_roll_deg` and whose eyes are at least
    `MIN_EYES_PER_BOX` of the box width apart; keypoint-less detections pass unchanged."""
    if len(dets) == 0 or np.isnan(dets.keypoints[:, :2]).all():
        return dets
    eye = dets.keypoints[:, 1] - dets.keypoints[:, 0]  # (K, 2)
    roll = np.degrees(np.abs(np.arctan2(eye[:, 1], eye[:, 0])))
    width = np.maximum(dets.boxes[:, 2] - dets.boxes[:, 0], 1e-6)
    ok = (roll <= max_roll_deg) & (np.linalg.norm(eye, axis=1) >= MIN_EYES_PER_BOX * width)
    return dets.take(np.flatnonzero(ok | np.isnan(roll)))


def mouth_corners(left_eye: np.ndarray, right_eye: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """(2, 2) estimated mouth corners: the mouth centre -/+ the template's mouth half-width along
    the eye axis. Their midpoint is exactly the detected mouth centre."""
    axis = right_eye - left_eye
    return np.stack([centre - MOUTH_HALF_WIDTH * axis, centre + MOUTH_HALF_WIDTH * axis])


def keypoints_from_landmarks(flat: Sequence[float]) -> np.ndarray:
    """(5, 2) keypoints from a manifest's landmarks: 68 iBUG points (eye centres 36-41 / 42-47,
    nose tip 30, mouth corners 48 / 54) or 5 points as given."""
    pts = np.asarray(flat, np.float32).reshape(-1, 2)
    if len(pts) == 5:
        return pts.copy()
    if len(pts) == 68:
        return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])
    raise ValueError(f"landmarks need 5 or 68 points, got {len(pts)}")


def provided_detections(landmarks: Optional[Sequence[float]], box: Optional[Sequence[float]]) -> Detections:
    """The manifest's own face (score 1.0): keypoints from landmarks, box given or their extent."""
    has_lm = landmarks is not None and len(landmarks) > 0
    bx = None if box is None else np.asarray(box, np.float32)
    has_box = bx is not None and np.isfinite(bx).all()
    if not has_lm and not has_box:
        return Detections.empty()
    if has_lm:
        kp = keypoints_from_landmarks(landmarks)
        pts = np.asarray(landmarks, np.float32).reshape(-1, 2)
        if not has_box:
            bx = np.concatenate([pts.min(0), pts.max(0)]).astype(np.float32)
    else:
        kp = np.full((5, 2), np.nan, np.float32)
    return Detections(bx[None].astype(np.float32), kp[None].astype(np.float32),
                      np.ones(1, np.float32))


def big_enough(dets: Detections, min_face_px: float) -> np.ndarray:
    """Indices of the faces whose box side is at least `min_face_px`."""
    wh = dets.boxes[:, 2:] - dets.boxes[:, :2]  # (K, 2)
    return np.flatnonzero(wh.max(1) >= min_face_px)


def largest_of(dets: Detections, candidates: np.ndarray) -> int:
    """The largest box among `candidates` (indices; ties: highest score)."""
    wh = dets.boxes[candidates, 2:] - dets.boxes[candidates, :2]
    return int(candidates[np.lexsort((-dets.scores[candidates], -wh.prod(1)))[0]])


def choose_face(dets: Detections, rule: FaceRule, previous_box: Optional[np.ndarray],
                min_face_px: float) -> tuple[Optional[int], FaceStatus]:
    """Index of the face to keep and the frame's status.

    Faces whose box side is below `min_face_px` are never kept. LARGEST: the biggest box (ties:
    highest score). TRACK: the box whose centre is closest to `previous_box`'s (the previous
    frame's kept face); the largest when there is none (first frame, or after a gap).
    """
    if len(dets) == 0:
        return None, FaceStatus.NO_FACE
    ok = big_enough(dets, min_face_px)
    if ok.size == 0:
        return None, FaceStatus.TOO_SMALL
    if rule is FaceRule.TRACK and previous_box is not None:
        centres = (dets.boxes[ok, :2] + dets.boxes[ok, 2:]) / 2
        prev = (previous_box[:2] + previous_box[2:]) / 2
        return int(ok[np.argmin(np.linalg.norm(centres - prev, axis=1))]), FaceStatus.OK
    return largest_of(dets, ok), FaceStatus.OK
