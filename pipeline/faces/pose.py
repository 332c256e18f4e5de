"""Head pose from the 68 landmarks, in OpenFace 2.x's conventions (cv2.solvePnP).

Camera: OpenFace's default when no calibration is given, from the frame size (w, h):
fx = fy = (500 w / 640 + 500 h / 480) / 2, cx = w / 2, cy = h / 2, no distortion.
Axes: x to the image's right, y down, z away from the camera (OpenCV's); translation
`pose_Tx, pose_Ty, pose_Tz` in millimetres is where the mean face's origin (between the eyes, in
the plane of the eye corners) lies in camera coordinates; rotation `pose_Rx, pose_Ry, pose_Rz`
(radians) are the Euler angles of R = Rx Ry Rz (pitch, yaw, roll), as OpenFace writes them; a
face looking straight into the camera has R = I, positive Ry turns the nose tip towards the
image's left and positive Rx lowers it (R acts on the mean face in camera axes).

`MEAN_FACE` (68, 3) mm is this project's own approximate mean face in iBUG 68-point order, built
from rounded anthropometric means of adults (eye corners at +-45 / +-17 mm, pupils 63 mm apart,
nose tip 32 mm below the eyes and 25 mm in front of them, mouth corners 50 mm apart, 65 mm below,
chin 118 mm below the eyes, jaw 144 mm wide at the ears and 70 mm behind the eyes): not
OpenFace's PDM, so absolute angles can differ from OpenFace's by a few degrees; the geometry
itself is exact (tests/test_landmarks_pose.py recovers known poses from projected points).
"""
from __future__ import annotations

import numpy as np

N_POINTS = 68
FOCAL_AT_640, FOCAL_AT_480 = 500.0, 500.0  # OpenFace's default focal length per frame side
MIN_POINTS = 6  # solvePnP's iterative solver needs at least this many finite points


def _mean_face() -> np.ndarray:
    pts = np.zeros((N_POINTS, 3))
    phi = np.linspace(0, np.pi, 17)  # jaw 0-16: ear (image left) over the chin to the other ear
    pts[0:17] = np.stack([-72 * np.cos(phi), 5 + 113 * np.sin(phi), 70 - 75 * np.sin(phi)], 1)
    brow_x = np.linspace(-52, -17, 5)  # 17-21 image-left brow, 22-26 mirrored
    brow_y = np.array([-18, -24, -26, -25, -22])
    brow_z = np.array([-2, -8, -12, -14, -14])
    pts[17:22] = np.stack([brow_x, brow_y, brow_z], 1)
    pts[22:27] = np.stack([-brow_x[::-1], brow_y[::-1], brow_z[::-1]], 1)
    pts[27:31] = np.stack([np.zeros(4), [0, 11, 21, 32], [-10, -15, -20, -25]], 1)  # bridge, tip
    pts[31:36] = np.stack([[-14, -7, 0, 7, 14], [38, 40, 41, 40, 38], [-10, -15, -18, -15, -10]], 1)
    eye_x = np.array([-45, -37, -25, -17, -25, -37])  # 36-41: outer corner, top, inner, bottom
    eye_y = np.array([0, -4, -4, 0, 3, 3])
    eye_z = np.array([0, -3, -3, -1, -2, -2])
    pts[36:42] = np.stack([eye_x, eye_y, eye_z], 1)
    pts[42:48] = np.stack([-eye_x[[3, 2, 1, 0, 5, 4]], eye_y[[3, 2, 1, 0, 5, 4]],
                           eye_z[[3, 2, 1, 0, 5, 4]]], 1)
    outer = [(-25, 65, -8), (-15, 60, -13), (-5, 58, -16), (0, 59, -16), (5, 58, -16),
             (15, 60, -13), (25, 65, -8), (16, 72, -12), (6, 75, -14), (0, 76, -14),
             (-6, 75, -14), (-16, 72, -12)]  # 48-59
    inner = [(-20, 65, -10), (-6, 63, -14), (0, 63, -14), (6, 63, -14), (20, 65, -10),
             (6, 67, -14), (0, 67, -14), (-6, 67, -14)]  # 60-67
    pts[48:60], pts[60:68] = outer, inner
    return pts.astype(np.float64)


MEAN_FACE = _mean_face()


def camera(width: int, height: int) -> np.ndarray:
    """(3, 3) OpenFace's default intrinsics for a frame of width x height."""
    f = (FOCAL_AT_640 * width / 640 + FOCAL_AT_480 * height / 480) / 2
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], np.float64)


def euler_xyz(r: np.ndarray) -> np.ndarray:
    """(rx, ry, rz) with r = Rx(rx) Ry(ry) Rz(rz)."""
    ry = np.arcsin(np.clip(r[0, 2], -1, 1))
    return np.array([np.arctan2(-r[1, 2], r[2, 2]), ry, np.arctan2(-r[0, 1], r[0, 0])])


def rotation_xyz(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return x @ y @ z


def project(rt: np.ndarray, width: int, height: int, model: np.ndarray = MEAN_FACE) -> np.ndarray:
    """(68, 2) image points of the model at pose rt = (Tx, Ty, Tz, Rx, Ry, Rz)."""
    cam = (model @ rotation_xyz(*rt[3:]).T) + rt[:3]
    uv = cam @ camera(width, height).T
    return uv[:, :2] / uv[:, 2:3]


def head_pose(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """(6,) Tx, Ty, Tz (mm), Rx, Ry, Rz (rad) from (68, 2) image points; NaN where it fails."""
    import cv2

    pts = np.asarray(points, np.float64)
    ok = np.isfinite(pts).all(1)
    if ok.sum() < MIN_POINTS:
        return np.full(6, np.nan)
    guess_t = np.array([[0.0], [0.0], [camera(width, height)[0, 0] * 0.3]])  # ~0.5 m ahead
    found, rvec, tvec = cv2.solvePnP(MEAN_FACE[ok], pts[ok], camera(width, height), None,
                                     rvec=np.zeros((3, 1)), tvec=guess_t, useExtrinsicGuess=True,
                                     flags=cv2.SOLVEPNP_ITERATIVE)
    if not found:
        return np.full(6, np.nan)
    return np.concatenate([tvec.ravel(), euler_xyz(cv2.Rodrigues(rvec)[0])])
