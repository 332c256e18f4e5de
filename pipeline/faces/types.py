"""The detector family's one interface and one return type: `Detector.detect(image) -> Detections`.

Implementations (built by `pipeline.faces.factory.make_detector`, each as `Cls(cfg, files,
min_score)`): BlazeFace front/back (`blazeface.py`), RetinaFace MobileNet-0.25 (`retinaface.py`),
SFD (`sfd.py`). `pipeline.faces.geometry.provided_detections` turns a manifest's landmarks / box
into the same type, so alignment never cares where a face came from.

Keypoint order everywhere: image-left eye, image-right eye, nose tip, image-left mouth corner,
image-right mouth corner, in source pixels; NaN where a detector has none.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.config import DetectorKind, FacesConfig
from pipeline.errors import UserError


class FaceStatus(IntEnum):
    """Per-frame outcome stored as uint8 in the crop store (`reason`); 0 = a face was aligned."""
    OK = 0
    NO_FACE = 1  # the detector (or the manifest) found no face
    TOO_SMALL = 2  # faces (or the image itself) smaller than faces.min_face_px
    UNREADABLE_IMAGE = 3  # missing, corrupt or truncated image file
    VIDEO_UNREADABLE = 4  # missing, zero-length or undecodable video
    FRAME_MISSING = 5  # the video ends before this labelled frame
    DETECTOR_ERROR = 6  # the detector raised on this frame
    ALIGN_FAILED = 7  # degenerate keypoints / box

    @classmethod
    def names(cls) -> dict[str, str]:
        return {str(int(s)): s.name.lower() for s in cls}


class DetectorError(UserError):
    """Weights that cannot be found, downloaded or loaded; the message names the path."""


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # (K, 4) float32 x0, y0, x1, y1
    keypoints: np.ndarray  # (K, 5, 2) float32, NaN where unknown
    scores: np.ndarray  # (K,) float32

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32),
                   np.zeros((0,), np.float32))

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, idx: np.ndarray) -> "Detections":
        return Detections(self.boxes[idx], self.keypoints[idx], self.scores[idx])


class Detector(ABC):
    """Built by the factory as `Cls(cfg, files, min_score)`; subclasses load their networks."""

    def __init__(self, cfg: FacesConfig, files: dict[str, Path], min_score: float):
        self.kind: DetectorKind = cfg.detector
        self.files = files  # role -> weights file actually loaded
        self.min_score = min_score
        self.max_roll_deg = cfg.max_roll_deg

    def detect(self, image: np.ndarray) -> Detections:
        """Faces in one RGB uint8 (H, W, 3) image."""
        return self.detect_batch([image])[0]

    @abstractmethod
    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        ...

    def detect_video_batch(self, images: Sequence[np.ndarray], gate) -> list[Detections]:
        """Consecutive frames of one video; `gate` (pipeline/faces/gate.FineGate) lets a
        detector with a costly search skip it on face-free frames. Default: detect_batch."""
        found = self.detect_batch(images)
        if gate is not None:
            gate.advance(len(images), [bool(len(d)) for d in found], 0, 0)
        return found
