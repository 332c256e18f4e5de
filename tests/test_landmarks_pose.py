"""Landmarks from the FAN's heatmaps (against face-alignment's own decoding) and head pose
geometry (known poses recovered from projected points)."""
from __future__ import annotations

import numpy as np
import pytest
from face_alignment.utils import get_preds_fromhm

from pipeline.faces import landmarks as lm
from pipeline.faces import pose


def _heatmaps(seed: int, b: int = 3, n: int = 68, size: int = 64) -> np.ndarray:
    """Gaussian blobs at random sub-cell positions (some on the border), plus noise and ties."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    centres = rng.uniform(-1, size, (b, n, 2))
    centres[0, :4] = [[0, 10], [63, 5], [20, 0], [30, 63]]  # border cells: no sub-pixel move
    hm = np.exp(-((xx - centres[..., 0, None, None]) ** 2 + (yy - centres[..., 1, None, None]) ** 2) / 4)
    hm += rng.normal(0, 1e-3, hm.shape)
    hm[1, 5] = 0.0  # a flat map: argmax 0, equal neighbours
    return hm.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decode_matches_face_alignment_get_preds_fromhm(seed):
    hm = _heatmaps(seed)
    want, _, _ = get_preds_fromhm(hm.copy())
    got = lm.decode(hm)
    np.testing.assert_array_equal(got, np.asarray(want, np.float32))


def test_decode_moves_a_quarter_cell_towards_the_larger_neighbour():
    hm = np.zeros((1, 1, 64, 64), np.float32)
    hm[0, 0, 20, 30] = 1.0
    hm[0, 0, 20, 31] = 0.5  # right neighbour larger: +0.25 in x; y neighbours equal: no move
    np.testing.assert_allclose(lm.decode(hm)[0, 0], [30 + 0.5 + 0.25, 20 + 0.5])


def test_crop_and_source_mapping_invert_the_crop_similarity():
    a, s = np.deg2rad(17), 1.7
    m = np.array([[s * np.cos(a), -s * np.sin(a), 12.0], [s * np.sin(a), s * np.cos(a), -40.0]])
    src = np.random.default_rng(0).uniform(0, 500, (68, 2))
    crop = src @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(lm.to_source(crop, m), src, atol=1e-3)
    # heatmap cell 0 covers crop pixels 0..3 of a 256 crop: its centre (0.5) is pixel 1.5
    np.testing.assert_allclose(lm.to_crop(np.array([[0.5, 63.5]]), 64, 256), [[1.5, 253.5]])


@pytest.mark.parametrize("rt", [(0, 0, 600, 0, 0, 0), (40, -25, 450, 0.2, -0.35, 0.1),
                                (-60, 30, 800, -0.25, 0.5, -0.3)])
def test_head_pose_recovers_a_known_pose_from_projected_points(rt):
    rt = np.array(rt, float)
    w, h = 640, 360
    pts = pose.project(rt, w, h)
    got = pose.head_pose(pts, w, h)
    np.testing.assert_allclose(got[:3], rt[:3], atol=1e-2)  # mm
    np.testing.assert_allclose(got[3:], rt[3:], atol=1e-4)  # rad


def test_pose_conventions_follow_openface():
    cam = pose.camera(640, 480)
    assert cam[0, 0] == cam[1, 1] == 500 and (cam[0, 2], cam[1, 2]) == (320, 240)
    # R acts on the mean face in camera axes (x right, y down, z away): positive Ry turns the
    # nose tip (in front of the eyes, z < 0) towards the image's left; positive Rx lowers it
    pts = pose.project(np.array([0, 0, 500, 0, 0.3, 0]), 640, 480)
    assert pts[30, 0] < pts[[36, 45], 0].mean() - 5
    pts = pose.project(np.array([0, 0, 500, 0.3, 0, 0]), 640, 480)
    up = pose.project(np.array([0, 0, 500, 0, 0, 0]), 640, 480)
    assert pts[30, 1] - pts[[36, 45], 1].mean() > up[30, 1] - up[[36, 45], 1].mean() + 5
    r = pose.rotation_xyz(0.1, -0.2, 0.3)
    np.testing.assert_allclose(pose.euler_xyz(r), [0.1, -0.2, 0.3], atol=1e-12)
    np.testing.assert_allclose(r, pose.rotation_xyz(0.1, 0, 0) @ pose.rotation_xyz(0, -0.2, 0)
                               @ pose.rotation_xyz(0, 0, 0.3))


def test_head_pose_is_nan_without_enough_points():
    pts = np.full((68, 2), np.nan)
    assert np.isnan(pose.head_pose(pts, 640, 480)).all()
    pts[:5] = 1.0
    assert np.isnan(pose.head_pose(pts, 640, 480)).all()


def test_mean_face_is_a_plausible_68_point_face():
    f = pose.MEAN_FACE
    assert f.shape == (68, 3) and np.isfinite(f).all()
    # mirror symmetric: point i and its iBUG mirror have opposite x, same y and z
    mirror = [*range(16, -1, -1), *range(26, 16, -1), 27, 28, 29, 30, *range(35, 30, -1),
              45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40, *range(54, 47, -1), 59, 58, 57, 56, 55,
              64, 63, 62, 61, 60, 67, 66, 65]
    np.testing.assert_allclose(f[mirror] * [-1, 1, 1], f, atol=1e-9)
    assert f[30, 2] < f[36, 2] and f[8, 1] > f[57, 1] > f[33, 1] > f[36, 1] > f[19, 1]
