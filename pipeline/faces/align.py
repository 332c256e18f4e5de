"""Face alignment: a similarity transform from 5 keypoints onto a canonical template.

The template lives in one constant, `TEMPLATE_UNITS`, in eye-distance units; `template(size,
eye_distance)` scales it so the eyes lie `eye_distance * size` pixels apart in a `size` x `size`
crop. When only a box is known (SFD, or a manifest with boxes and no landmarks) the crop is a
square around the box with a margin. Each frame is aligned on its own.
The reference's own test-time geometry (a box-centred crop, neighbour frames warped onto the
centre frame's keypoints) is at the end: `reference_centre_transform`, `neighbour_transform`.
"""
from __future__ import annotations

import cv2
import numpy as np

# Canonical 5-point face in eye-distance units (y down, origin at the eyes' midpoint): image-left
# eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner. Proportions
# are those of the widely used ArcFace 112x112 five-point template, made left-right symmetric.
TEMPLATE_UNITS = np.array([
    [-0.500, 0.000],
    [0.500, 0.000],
    [0.000, 0.571],
    [-0.414, 1.154],
    [0.414, 1.154],
], dtype=np.float64)  # (5, 2)
# Half the mouth width in eye-distance units: estimates mouth corners from a mouth centre.
MOUTH_HALF_WIDTH = float(TEMPLATE_UNITS[4, 0])
MIN_POINTS = 2  # a similarity transform (4 unknowns) needs two point pairs
MIN_EYE_DISTANCE_PX = 1.0  # below this the keypoints are degenerate


# The crop geometry's defaults (faces.size, faces.eye_distance, faces.box_margin; a bundle's crop):
CROP_SIZE = 256  # the FAN's input side
EYE_DISTANCE = 0.30  # template eye distance as a fraction of the crop width
BOX_MARGIN = 0.25  # box-only crops: a square grown by this fraction of the box side per edge


class AlignError(ValueError):
    """Keypoints or box from which no crop can be made (degenerate, NaN)."""


def template(size: int = CROP_SIZE, eye_distance: float = EYE_DISTANCE) -> np.ndarray:
    """(5, 2) float32 template points in crop pixels.

    Scaled so the eyes are `eye_distance * size` apart, and placed so the point midway between
    the eyes and the mouth centre is the crop's centre (room for brows above, chin below).
    """
    ed = eye_distance * size
    mouth_y = TEMPLATE_UNITS[3:, 1].mean()
    centre_units = np.array([0.0, mouth_y / 2])  # midway between eye line and mouth centre
    pts = (TEMPLATE_UNITS - centre_units) * ed + size / 2.0
    return pts.astype(np.float32)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(2, 3) least-squares similarity (Umeyama 1991) mapping src (K, 2) onto dst (K, 2).

    Rows where either side is NaN are left out; at least two must remain.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ok = np.isfinite(src).all(1) & np.isfinite(dst).all(1)
    if ok.sum() < MIN_POINTS:
        raise AlignError(f"only {int(ok.sum())} finite keypoints; need {MIN_POINTS}")
    s, d = src[ok], dst[ok]  # (K', 2)
    mu_s, mu_d = s.mean(0), d.mean(0)
    sc, dc = s - mu_s, d - mu_d
    var_s = (sc ** 2).sum() / len(s)
    if var_s < 1e-9:
        raise AlignError("keypoints coincide; no transform")
    cov = dc.T @ sc / len(s)  # (2, 2)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(sig) @ sign) / var_s)
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])  # (2, 3)


def transform_points(pts: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine to (K, 2) points."""
    pts = np.asarray(pts, np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def keypoint_transform(keypoints: np.ndarray, size: int, eye_distance: float) -> np.ndarray:
    """(2, 3) transform taking source-pixel keypoints (5, 2) onto the template."""
    kp = np.asarray(keypoints, np.float64)
    if not np.isfinite(kp[:2]).all():
        raise AlignError("eye keypoints missing")
    if np.linalg.norm(kp[1] - kp[0]) < MIN_EYE_DISTANCE_PX:
        raise AlignError("eye keypoints coincide")
    return similarity(kp, template(size, eye_distance))


def box_transform(box: np.ndarray, size: int, margin: float) -> np.ndarray:
    """(2, 3) transform taking a square around `box` (x0, y0, x1, y1), grown by `margin` times
    its side on every edge, onto the whole crop; no rotation."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0)
    if not np.isfinite(side) or side <= 0:
        raise AlignError(f"degenerate box {box}")
    span = side * (1 + 2 * margin)
    scale = size / span
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]])


def face_transform(keypoints: np.ndarray | None, box: np.ndarray | None, *, size: int,
                   eye_distance: float, margin: float) -> np.ndarray:
    """Keypoints when the eyes are known, else the box; AlignError when neither is usable."""
    if keypoints is not None and np.isfinite(np.asarray(keypoints)[:2]).all():
        return keypoint_transform(keypoints, size, eye_distance)
    if box is not None and np.isfinite(np.asarray(box)).all():
        return box_transform(box, size, margin)
    raise AlignError("neither eye keypoints nor a box")


def warp(image: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) uint8 crop; outside the source image is black."""
    return cv2.warpAffine(image, m.astype(np.float64), (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


# -- the reference's test-time crop (github.com/jingyang2017/AU-Net, data/data_load.py) ----------
# The reference sets scale = (w + h) / 260 and crops a square of side 200 * scale around the box
# centre: side = (w + h) * 200 / 260 pixels, i.e. about 1.54 x the mean of the box's sides.
REFERENCE_SIDE_PER_BOX_PERIMETER = 200 / 260  # crop side per pixel of (box width + box height)


def reference_centre_transform(box: np.ndarray, size: int = 256) -> np.ndarray:
    """(2, 3) transform of the reference's centre-frame crop: the box centre goes to the crop
    centre (size / 2, as the reference), a square of side (w + h) * 200 / 260 source pixels fills
    the size x size crop; no rotation. `box` is (x0, y0, x1, y1) in source pixels."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    if not (np.isfinite(w) and np.isfinite(h) and w > 0 and h > 0):
        raise AlignError(f"degenerate box {box}")
    side = REFERENCE_SIDE_PER_BOX_PERIMETER * (w + h)
    scale = size / side
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]])


def neighbour_transform(kp_neighbour: np.ndarray, kp_target: np.ndarray) -> np.ndarray:
    """(2, 3) similarity warping a neighbour frame (t - T or t + T) onto the centre frame's crop.

    kp_neighbour: the neighbour's own 5 keypoints in its source pixels (5, 2); kp_target: the
    centre frame's 5 keypoints already in crop pixels, i.e. transform_points(kp_centre,
    reference_centre_transform(box_centre)). The reference aligns neighbours this way so that all
    three frames share the centre frame's crop; a least-squares fit, exact for a pure similarity.
    """
    return similarity(kp_neighbour, kp_target)
