"""Alignment geometry, keypoint mapping and the face-choice rule (no detector, no media)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.faces.align import (TEMPLATE_UNITS, AlignError, box_transform, face_transform,
                            similarity, template, transform_points, warp)
from pipeline.faces.blazeface import square_tiles
from pipeline.config import FaceRule
from pipeline.faces.geometry import choose_face, keypoints_from_landmarks, mouth_corners, nms, plausible, provided_detections
from pipeline.faces.types import Detections, FaceStatus


def _rot(deg: float, scale: float, t: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), t[0]],
                     [scale * np.sin(a), scale * np.cos(a), t[1]]])


def test_template_scale_and_placement():
    t = template(256, 0.30)  # (5, 2)
    assert t.shape == (5, 2) and t.dtype == np.float32
    assert np.linalg.norm(t[1] - t[0]) == pytest.approx(0.30 * 256, abs=1e-3)
    assert t[0, 1] == pytest.approx(t[1, 1])  # eyes level
    assert (t[0, 0] + t[1, 0]) / 2 == pytest.approx(128)  # symmetric about the centre line
    mid = (t[:2].mean(0) + t[3:].mean(0)) / 2
    np.testing.assert_allclose(mid, [128, 128], atol=1e-3)  # eyes-mouth midpoint at the centre
    assert np.linalg.norm(template(128, 0.4)[1] - template(128, 0.4)[0]) == pytest.approx(51.2, abs=1e-3)


def test_similarity_recovers_a_known_transform_exactly():
    src = np.random.default_rng(0).uniform(0, 300, (5, 2))
    m = _rot(17.0, 0.6, (12.5, -40.0))
    est = similarity(src, transform_points(src, m))
    np.testing.assert_allclose(est, m, atol=1e-9)


def test_similarity_ignores_nan_rows_and_refuses_degenerate_input():
    src = np.array([[10, 10], [50, 12], [30, 40], [np.nan, np.nan], [np.nan, np.nan]])
    m = _rot(-8.0, 1.7, (3.0, 4.0))
    dst = transform_points(np.nan_to_num(src), m)
    np.testing.assert_allclose(similarity(src, dst), m, atol=1e-9)
    with pytest.raises(AlignError):
        similarity(src[[0, 3, 4]], dst[[0, 3, 4]])  # one finite point
    with pytest.raises(AlignError):
        similarity(np.ones((5, 2)), dst)  # all points coincide


def test_face_transform_puts_keypoints_on_the_template():
    tpl = template(256, 0.30)
    m_true = _rot(25.0, 0.8, (40.0, 70.0))  # the template seen through some head pose
    kp = transform_points(tpl, np.linalg.inv(np.vstack([m_true, [0, 0, 1]]))[:2])
    m = face_transform(kp, None, size=256, eye_distance=0.30, margin=0.25)
    np.testing.assert_allclose(transform_points(kp, m), tpl, atol=1e-4)


def test_warp_moves_image_content_onto_the_template():
    """Dots drawn at the keypoints of a rotated, shifted face end up at the template's points."""
    tpl = template(256, 0.30)
    src_to_crop = _rot(-20.0, 0.5, (-60.0, 30.0))
    inv = np.linalg.inv(np.vstack([src_to_crop, [0, 0, 1]]))[:2]
    kp = transform_points(tpl, inv)  # where the face's points are in the source image
    img = np.zeros((600, 700, 3), np.uint8)
    for x, y in kp[:2]:
        cv2.circle(img, (int(round(x)), int(round(y))), 6, (255, 255, 255), -1)
    crop = warp(img, face_transform(kp, None, size=256, eye_distance=0.30, margin=0.2), 256)
    assert crop.shape == (256, 256, 3) and crop.dtype == np.uint8
    for x, y in tpl[:2]:
        win = crop[int(y) - 12:int(y) + 13, int(x) - 12:int(x) + 13, 0].astype(float)
        ys, xs = np.nonzero(win > 128)
        centre = np.array([xs.mean() + int(x) - 12, ys.mean() + int(y) - 12])
        assert np.linalg.norm(centre - [x, y]) < 1.5


def test_box_transform_is_a_square_with_margin():
    m = box_transform(np.array([100, 50, 200, 170]), 256, 0.25)  # 100 x 120 box
    np.testing.assert_allclose(transform_points(np.array([[150, 110]]), m), [[128, 128]])
    assert m[0, 0] == pytest.approx(256 / (120 * 1.5)) and m[0, 1] == 0
    with pytest.raises(AlignError):
        box_transform(np.array([5, 5, 5, 5]), 256, 0.25)
    # no eyes: the box is used; neither: refused
    kp_nan = np.full((5, 2), np.nan)
    np.testing.assert_allclose(face_transform(kp_nan, np.array([100, 50, 200, 170]), size=256,
                                              eye_distance=0.3, margin=0.25), m)
    with pytest.raises(AlignError):
        face_transform(kp_nan, None, size=256, eye_distance=0.3, margin=0.25)


def test_keypoints_from_68_and_5_points():
    pts = np.arange(136, dtype=np.float32).reshape(68, 2)
    kp = keypoints_from_landmarks(pts.ravel())
    np.testing.assert_allclose(kp[0], pts[36:42].mean(0))
    np.testing.assert_allclose(kp[1], pts[42:48].mean(0))
    np.testing.assert_allclose(kp[2:], pts[[30, 48, 54]])
    five = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(keypoints_from_landmarks(five), five.reshape(5, 2))
    with pytest.raises(ValueError):
        keypoints_from_landmarks(np.zeros(12))


def test_mouth_corners_follow_the_template_proportions():
    le, re, mc = np.array([100.0, 100]), np.array([160.0, 100]), np.array([130.0, 170])
    c = mouth_corners(le, re, mc)
    np.testing.assert_allclose(c.mean(0), mc)
    assert c[1, 0] - c[0, 0] == pytest.approx(60 * 2 * TEMPLATE_UNITS[4, 0])


def test_provided_detections():
    lm = (np.random.default_rng(1).uniform(50, 150, (68, 2))).ravel()
    d = provided_detections(lm, None)
    assert len(d) == 1 and d.scores[0] == 1.0
    np.testing.assert_allclose(d.boxes[0], [lm[0::2].min(), lm[1::2].min(), lm[0::2].max(), lm[1::2].max()], rtol=1e-6)
    d = provided_detections(None, [1, 2, 30, 40])
    assert np.isnan(d.keypoints).all() and d.boxes.tolist() == [[1, 2, 30, 40]]
    assert len(provided_detections([], None)) == 0


def _dets(boxes, scores):
    b = np.asarray(boxes, np.float32)
    return Detections(b, np.full((len(b), 5, 2), np.nan, np.float32), np.asarray(scores, np.float32))


def test_choose_face_rules():
    d = _dets([[0, 0, 50, 50], [100, 100, 200, 200], [300, 0, 360, 60]], [0.9, 0.6, 0.99])
    assert choose_face(d, FaceRule.LARGEST, None, 24) == (1, FaceStatus.OK)
    assert choose_face(d, FaceRule.TRACK, None, 24) == (1, FaceStatus.OK)  # no track: largest
    prev = np.array([305, 5, 362, 58], np.float32)
    assert choose_face(d, FaceRule.TRACK, prev, 24) == (2, FaceStatus.OK)
    assert choose_face(d, FaceRule.LARGEST, prev, 24) == (1, FaceStatus.OK)
    assert choose_face(d, FaceRule.LARGEST, None, 120) == (None, FaceStatus.TOO_SMALL)
    assert choose_face(Detections.empty(), FaceRule.TRACK, prev, 24) == (None, FaceStatus.NO_FACE)
    tie = _dets([[0, 0, 50, 50], [100, 0, 150, 50]], [0.7, 0.8])
    assert choose_face(tie, FaceRule.LARGEST, None, 24)[0] == 1  # same size: higher score


def test_square_tiles_cover_the_image():
    for h, w in [(360, 640), (667, 1000), (1024, 817), (450, 450), (100, 1000)]:
        tiles = square_tiles(h, w)
        side = min(h, w)
        assert all(s == side for _, _, s in tiles)
        ends = [(x0 + s if w >= h else y0 + s) for x0, y0, s in tiles]
        starts = [(x0 if w >= h else y0) for x0, y0, _ in tiles]
        assert starts[0] == 0 and ends[-1] == max(h, w)
        assert all(b - a <= side / 2 + 1 for a, b in zip(starts, starts[1:]))  # half overlap


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    assert nms(boxes, np.array([0.5, 0.9, 0.7])).tolist() == [1, 2]


def test_plausible_drops_tilted_and_narrow_eyed_faces():
    kp = np.full((3, 5, 2), np.nan, np.float32)
    kp[0, :2] = [[10, 10], [50, 12]]  # upright, eyes 0.4 box widths apart
    kp[1, :2] = [[10, 10], [20, 50]]  # eye line at 76 degrees: a cloud, not a face
    kp[2, :2] = [[10, 10], [20, 10]]  # eyes 0.1 box widths apart
    boxes = np.array([[0, 0, 100, 100]] * 3, np.float32)
    d = Detections(boxes, kp, np.ones(3, np.float32))
    assert plausible(d, 45.0).keypoints[:, 0, 0].tolist() == [10.0]
    assert len(plausible(d, 180.0)) == 2
    boxes_only = Detections(boxes, np.full((3, 5, 2), np.nan, np.float32), np.ones(3, np.float32))
    assert len(plausible(boxes_only, 45.0)) == 3
