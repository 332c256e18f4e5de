"""The faces stage's block work tells the input's damage from a bug (stages/faces_frames.py):
a video that cannot be decoded becomes `video_unreadable` rows, a bug propagates, and a detector
failing on a batch is said in the block's errors, not dropped."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.config import FacesConfig
from pipeline.config import DetectorKind
from pipeline.faces.types import Detections, Detector, FaceStatus
from pipeline.video import MediaError
from stages import faces_frames

FACES = FacesConfig(detector=DetectorKind.BLAZEFACE, size=64, min_face_px=8)


def _video_rows(n: int = 4) -> list[dict]:
    return [{"video_path": "/data/v.mp4", "image_path": None, "video_frame": f, "video_id": "v",
             "subject": "s"} for f in range(n)]


class _NoFaces(Detector):
    kind = DetectorKind.BLAZEFACE
    files: dict = {}

    def __init__(self, batch_error: Exception | None = None):
        self.batch_error = batch_error

    def detect_batch(self, images):
        if self.batch_error is not None and len(images) > 1:
            raise self.batch_error
        return [Detections.empty() for _ in images]


def _frames_then(error: Exception):
    def fake_iter_video(path, wanted, info):
        yield 0, np.zeros((32, 32, 3), np.uint8)
        raise error
    return fake_iter_video


@pytest.mark.parametrize("error", [MediaError("/data/v.mp4: not a decodable video"),
                                   cv2.error("OpenCV(4.x) error: (-215:Assertion failed)")])
def test_decoder_errors_make_the_rest_of_the_video_unreadable(monkeypatch, error):
    monkeypatch.setattr(faces_frames, "iter_video", _frames_then(error))
    data, errors, _ = faces_frames.process_rows(_video_rows(), FACES, _NoFaces())
    assert data["reason"][0] == int(FaceStatus.NO_FACE)  # decoded, no face in it
    assert (data["reason"][1:] == int(FaceStatus.VIDEO_UNREADABLE)).all()
    assert any(str(error) in e for e in errors)


def test_a_bug_while_decoding_propagates(monkeypatch):
    monkeypatch.setattr(faces_frames, "iter_video", _frames_then(TypeError("bad operand")))
    with pytest.raises(TypeError, match="bad operand"):
        faces_frames.process_rows(_video_rows(), FACES, _NoFaces())


def test_a_batch_detector_error_is_reported_and_frames_are_retried_one_by_one(monkeypatch):
    monkeypatch.setattr(faces_frames, "iter_video", lambda p, w, info: (
        (f, np.zeros((32, 32, 3), np.uint8)) for f in sorted(w)))
    detector = _NoFaces(RuntimeError("CUDA out of memory"))
    data, errors, _ = faces_frames.process_rows(_video_rows(), FACES, detector)
    assert (data["reason"] == int(FaceStatus.NO_FACE)).all()  # every frame detected on its own
    assert len(errors) == 1 and "CUDA out of memory" in errors[0] and "/data/v.mp4 frame 0" in errors[0]


def test_a_bug_in_the_detector_propagates(monkeypatch):
    monkeypatch.setattr(faces_frames, "iter_video", lambda p, w, info: (
        (f, np.zeros((32, 32, 3), np.uint8)) for f in sorted(w)))
    with pytest.raises(AttributeError):
        faces_frames.process_rows(_video_rows(), FACES, _NoFaces(AttributeError("no .shape")))
