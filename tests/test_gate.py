"""The video gate on BlazeFace's finer tiles (pipeline/faces/gate.py): a face-free stretch gets
them on one frame in `every`, a face that appears there is followed from then on, and on the
shared video whose face leaves, the gated detector finds the faces the ungated one finds."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED
from pipeline.config import FacesConfig
from pipeline.faces.blazeface import BlazeFace
from pipeline.faces.factory import make_detector
from pipeline.faces.gate import FineGate
from pipeline.video import iter_video

BLAZE = SHARED / "weights" / "blazeface" / "blazeface.pth"


class _Fake(BlazeFace):
    """BlazeFace's gate logic over a scripted scene: no face at level 0, a small face that the
    finer tiles see on frames >= `appears` (stream positions)."""

    def __init__(self, appears: int):
        self.appears, self.searched, self.max_roll_deg = appears, [], 90.0
        self.confirm, self.pyramid, self.base = {"x": None}, None, 0

    def _tiles(self, images, which, coarse):
        if coarse:
            return [np.zeros((0, 15)) for _ in which]
        self.searched += [self.base + i for i in which]
        face = np.array([[10, 10, 40, 40, 15, 20, 35, 20, 25, 28, 18, 34, 32, 34, 0, 0.9]])[:, :15]
        face[0, 14] = 0.9
        return [face if self.base + i >= self.appears else np.zeros((0, 15)) for i in which]

    def _confirmed(self, img, rows):
        return np.ones(len(rows), bool)


def _run(det: _Fake, n_batches: int, batch: int = 16) -> list[bool]:
    gate, found = FineGate(recent=30, every=10), []
    images = [np.zeros((8, 8, 3), np.uint8)] * batch
    for b in range(n_batches):
        det.base = b * batch
        found += [bool(len(d)) for d in det.detect_video_batch(images, gate)]
    return found


def test_a_face_free_stretch_is_searched_on_one_frame_in_ten():
    det = _Fake(appears=10 ** 9)
    assert not any(_run(det, 4)) and det.searched == list(range(0, 64, 10))


def test_a_face_appearing_in_a_face_free_stretch_is_found_within_every_frames_then_followed():
    det = _Fake(appears=23)
    found = _run(det, 4)
    assert found.index(True) == 30 and all(found[30:])  # the next 1-in-10 frame, then every one
    det = _Fake(appears=3)  # in the first batch: found at 10, the rest of that batch follows
    found = _run(det, 1)
    assert found == [False] * 10 + [True] * 6


@pytest.mark.skipif(not BLAZE.exists(), reason=f"{SHARED} absent: no media, no weights")
def test_gated_detector_finds_the_faces_of_the_ungated_one_on_real_video(one_thread):
    det = make_detector(FacesConfig(detector_weights=BLAZE))
    frames = [img for _, img in iter_video(SHARED / "media" / "videos" / "face_noface.mov")]
    gate = FineGate()
    gated, full = [], []
    for i in range(0, len(frames), 16):
        gated += [bool(len(d)) for d in det.detect_video_batch(frames[i:i + 16], gate)]
        full += [bool(len(d)) for d in det.detect_batch(frames[i:i + 16])]
    assert gated == full and sum(full) == 72  # faces on frames 0-71 (tests/data truth)
    # frames 72-101 follow the face that left (30 frames), then 110, 120, ..., 160: the rest skip
    assert (gate.searched, gate.skipped) == (30 + 6, 97 - 36)
