"""The `faces:` section: which detector, which face, the crop geometry."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

from pydantic import Field, field_validator

from pipeline.config.base import Strict
from pipeline.faces.align import BOX_MARGIN, CROP_SIZE, EYE_DISTANCE


class DetectorKind(str, Enum):
    BLAZEFACE = "blazeface"
    BLAZEFACE_BACK = "blazeface_back"
    SFD = "sfd"
    RETINAFACE = "retinaface"  # RetinaFace MobileNet-0.25 (pipeline/faces/retinaface.py); weights by path
    PROVIDED = "provided"  # use the manifest's landmarks / boxes; no detector runs


class FaceRule(str, Enum):
    LARGEST = "largest"  # the largest box (ties: highest score)
    TRACK = "track"  # in videos, the box closest to the previous frame's face; else largest


class TilePyramid(str, Enum):
    OFF = "off"  # BlazeFace sees squares of the short side only
    FALLBACK = "fallback"  # finer tiles only on frames where those found no face
    ALWAYS = "always"  # finer tiles on every frame (every small face; ~10x the time on video)


class TemporalRule(str, Enum):
    NONE = "none"  # every frame on its own
    PERSIST = "persist"  # video rows: a face must overlap faces on neighbouring rows (see docs)


class FacesConfig(Strict):
    detector: DetectorKind = DetectorKind.BLAZEFACE
    detector_weights: Optional[Path] = None  # None: face-alignment's own downloader
    detector_anchors: Optional[Path] = None
    # None: the detector's own measured default (pipeline.faces.factory.DEFAULT_MIN_SCORE).
    min_score: Optional[float] = Field(None, ge=0, le=1)
    # BlazeFace small faces: tiles of 1/2 (level 2), 1/4 (3), 1/8 (4) of the short side too, their
    # faces confirmed by both BlazeFace models (pipeline/faces/blazeface.py).
    tile_pyramid: TilePyramid = TilePyramid.FALLBACK
    tile_levels: int = Field(2, ge=1, le=4)
    temporal: TemporalRule = TemporalRule.NONE
    persist_frames: int = Field(3, ge=2, le=30)  # temporal=persist: the shortest run kept
    rule: FaceRule = FaceRule.TRACK
    size: int = Field(CROP_SIZE, gt=0)  # crop side (pixels)
    # Template eye distance as a fraction of the crop width; smaller = more margin around the face.
    eye_distance: float = Field(EYE_DISTANCE, gt=0.05, lt=0.8)
    min_face_px: int = Field(24, ge=1)  # faces smaller than this (box side) are not kept
    # Box-only crops (SFD, manifest boxes without landmarks): a square around the box grown by
    # this fraction of its side on every edge.
    box_margin: float = Field(BOX_MARGIN, ge=0, le=2)
    # Keypoint detectors: faces whose eye line is tilted more than this are dropped as false
    # positives (BlazeFace fires on clouds and lettering with |roll| > 60 deg); 180 = keep all.
    max_roll_deg: float = Field(45.0, gt=0, le=180)
    chunk_frames: int = Field(64, ge=1)  # crops per Zarr chunk block / per resumable unit

    @field_validator("tile_pyramid", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        """YAML reads a bare `off` as False: take it as the word the user wrote."""
        return TilePyramid.OFF if v is False else v

