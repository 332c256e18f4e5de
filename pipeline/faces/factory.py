"""The detector factory: the configured detector with its weights resolved and its score threshold."""
from __future__ import annotations

from typing import Optional

from pipeline.config import DetectorKind, FacesConfig
from pipeline.faces.blazeface import BlazeFace
from pipeline.faces.retinaface import RetinaFace
from pipeline.faces.sfd import SFD
from pipeline.faces.types import Detector, DetectorError
from pipeline.faces.weights import resolve_weights

# faces.min_score when the config leaves it unset: chosen per detector on the shared media
# (docs/faces.md, "Detectors on real footage").
DEFAULT_MIN_SCORE = {DetectorKind.BLAZEFACE: 0.8, DetectorKind.BLAZEFACE_BACK: 0.65,
                     DetectorKind.SFD: 0.5, DetectorKind.RETINAFACE: 0.6}
DETECTORS = {DetectorKind.BLAZEFACE: BlazeFace, DetectorKind.BLAZEFACE_BACK: BlazeFace,
             DetectorKind.SFD: SFD, DetectorKind.RETINAFACE: RetinaFace}


def min_score(cfg: FacesConfig) -> float:
    """The score threshold in force: the config's, else the detector's measured default."""
    return DEFAULT_MIN_SCORE.get(cfg.detector, 0.5) if cfg.min_score is None else cfg.min_score


def make_detector(cfg: FacesConfig) -> Optional[Detector]:
    """The configured detector (None for `provided`: the manifest's landmarks are used).

    Every detector is built the same way, `Cls(cfg, files, min_score)`: its weight files are
    resolved here (given paths, else face-alignment's downloader), never inside a constructor.
    """
    if cfg.detector is DetectorKind.PROVIDED:
        return None
    if cfg.detector not in DETECTORS:  # pragma: no cover - DetectorKind is closed
        raise DetectorError(f"unsupported detector {cfg.detector}")
    return DETECTORS[cfg.detector](cfg, resolve_weights(cfg), min_score(cfg))
