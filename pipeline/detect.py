"""Face detection behind one interface: `Detector.detect(image) -> Detections`.

Implementations: BlazeFace front/back (face-alignment's network over square tiles and a tile
pyramid, pipeline/blazeface.py; boxes + 6 keypoints mapped to the 5-point order), RetinaFace
MobileNet-0.25 (our own plain-torch network, pipeline/retinaface.py; boxes + 5 landmarks) and SFD
(face-alignment's, boxes only). `provided_detections` turns a manifest's landmarks / box into
the same type, so alignment never cares where a face came from.

Keypoint order everywhere: image-left eye, image-right eye, nose tip, image-left mouth corner,
image-right mouth corner, in source pixels; NaN where a detector has none.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipeline.align import MOUTH_HALF_WIDTH
from pipeline.config import DetectorKind, FaceRule, FacesConfig, TilePyramid
from pipeline.errors import UserError

NMS_IOU = 0.3  # BlazeFace's own suppression threshold, reused to merge tiles
# faces.min_score when the config leaves it unset: chosen per detector on the shared media
# (docs/faces.md, "Detectors on real footage").
DEFAULT_MIN_SCORE = {DetectorKind.BLAZEFACE: 0.8, DetectorKind.BLAZEFACE_BACK: 0.65,
                     DetectorKind.SFD: 0.5, DetectorKind.RETINAFACE: 0.6}
# Real faces have eyes 0.33-0.46 box widths apart (BlazeFace on the shared media); false
# positives on sky and lettering go down to 0.09.
MIN_EYES_PER_BOX = 0.2


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
    kind: DetectorKind
    files: dict[str, Path]  # role -> weights file actually loaded

    def detect(self, image: np.ndarray) -> Detections:
        """Faces in one RGB uint8 (H, W, 3) image."""
        return self.detect_batch([image])[0]

    @abstractmethod
    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        ...


# -- geometry helpers -------------------------------------------------------------------------
def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        xx0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx1 - xx0, 0, None) * np.clip(yy1 - yy0, 0, None)
        ious = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[ious <= iou]
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


def choose_face(dets: Detections, rule: FaceRule, previous_box: Optional[np.ndarray],
                min_face_px: float) -> tuple[Optional[int], FaceStatus]:
    """Index of the face to keep and the frame's status.

    Faces whose box side is below `min_face_px` are never kept. LARGEST: the biggest box (ties:
    highest score). TRACK: the box whose centre is closest to `previous_box`'s (the previous
    frame's kept face); the largest when there is none (first frame, or after a gap).
    """
    if len(dets) == 0:
        return None, FaceStatus.NO_FACE
    wh = dets.boxes[:, 2:] - dets.boxes[:, :2]  # (K, 2)
    side = wh.max(1)
    ok = np.flatnonzero(side >= min_face_px)
    if ok.size == 0:
        return None, FaceStatus.TOO_SMALL
    if rule is FaceRule.TRACK and previous_box is not None:
        centres = (dets.boxes[ok, :2] + dets.boxes[ok, 2:]) / 2
        prev = (previous_box[:2] + previous_box[2:]) / 2
        return int(ok[np.argmin(np.linalg.norm(centres - prev, axis=1))]), FaceStatus.OK
    area = wh[ok].prod(1)
    best = np.lexsort((-dets.scores[ok], -area))[0]  # largest area, then highest score
    return int(ok[best]), FaceStatus.OK


# -- weights ----------------------------------------------------------------------------------
def _download_urls(kind: DetectorKind) -> dict[str, str]:
    """face-alignment's own download addresses for the detector's files ({}: none we can use)."""
    if kind is DetectorKind.RETINAFACE:
        return {}  # face-alignment's RetinaFace wrapper needs torchvision; no address relied on
    if kind is DetectorKind.SFD:
        from face_alignment.detection.sfd.sfd_detector import models_urls
        return {"weights": models_urls["s3fd"]}
    from face_alignment.detection.blazeface.blazeface_detector import models_urls
    pre = "blazeface_back" if kind is DetectorKind.BLAZEFACE_BACK else "blazeface"
    return {"weights": models_urls[f"{pre}_weights"], "anchors": models_urls[f"{pre}_anchors"]}


def _basename(url: str) -> str:
    return Path(url.split("?")[0]).name


def _resolve(kind: DetectorKind, weights: Optional[Path], anchors: Optional[Path],
             key: str = "faces.detector") -> dict[str, Path]:
    """role -> local file for one network: given paths (anchors default to the standard file
    beside the weights), else face-alignment's downloader (torch hub cache)."""
    urls = _download_urls(kind)
    if weights is not None:
        files = {"weights": Path(weights)}
        if "anchors" in urls:
            files["anchors"] = Path(anchors or Path(weights).with_name(_basename(urls["anchors"])))
        for role, path in files.items():
            if not path.is_file():
                raise DetectorError(f"{key}_{role}: file not found: {path}")
        return files
    if not urls:
        raise DetectorError(f"faces.detector_weights is not set: the {kind.value} detector is "
                            f"not downloaded; set faces.detector_weights to its weights file "
                            f"(e.g. mobilenet0.25_Final.pth)")
    from face_alignment.utils import load_file_from_url

    files = {}
    for role, url in urls.items():
        try:
            files[role] = Path(load_file_from_url(url, progress=False))
        except Exception as e:  # no internet, proxy, disk: say what to do instead
            raise DetectorError(
                f"could not download the {kind.value} {role} from {url} ({e}); offline, "
                f"set faces.detector_weights (and faces.detector_anchors) to local files") from None
    return files


def verifier_kind(cfg: FacesConfig) -> Optional[DetectorKind]:
    """The second BlazeFace model that confirms faces from finer tiles (None: no pyramid)."""
    if (cfg.detector not in (DetectorKind.BLAZEFACE, DetectorKind.BLAZEFACE_BACK)
            or cfg.tile_pyramid is TilePyramid.OFF or cfg.tile_levels < 2):
        return None
    return (DetectorKind.BLAZEFACE if cfg.detector is DetectorKind.BLAZEFACE_BACK
            else DetectorKind.BLAZEFACE_BACK)


def resolve_weights(cfg: FacesConfig) -> dict[str, Path]:
    """role -> local file for every network the detector loads: `weights` (and `anchors`), plus
    `verifier_weights` / `verifier_anchors` for BlazeFace's pyramid: the other BlazeFace model's
    standard files beside faces.detector_weights, or downloaded when that is unset."""
    files = _resolve(cfg.detector, cfg.detector_weights, cfg.detector_anchors)
    other = verifier_kind(cfg)
    if other is not None:
        beside = None
        if cfg.detector_weights is not None:
            beside = Path(cfg.detector_weights).with_name(_basename(_download_urls(other)["weights"]))
        for role, path in _resolve(other, beside, None, "faces.tile_pyramid: verifier").items():
            files[f"verifier_{role}"] = path
    return files


class SFD(Detector):
    """S3FD at full image resolution (face-alignment's network and decoding): boxes only."""

    def __init__(self, cfg: FacesConfig, min_score: float):
        import torch
        from face_alignment.detection.sfd.net_s3fd import s3fd

        self.kind = cfg.detector
        self.files = resolve_weights(cfg)
        self.min_score = min_score
        try:
            net = s3fd()
            net.load_state_dict(torch.load(self.files["weights"], map_location="cpu", weights_only=True))
        except Exception as e:
            raise DetectorError(f"{self.files['weights']}: not S3FD weights ({e})") from None
        self.net = net.eval()

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        from face_alignment.detection.sfd.bbox import nms as sfd_nms
        from face_alignment.detection.sfd.detect import detect

        out = []
        for img in images:  # frames may differ in size: one at a time
            cand = np.asarray(detect(self.net, img, device="cpu")[0], np.float32).reshape(-1, 5)
            if len(cand):
                cand = cand[sfd_nms(cand, NMS_IOU)]
                cand = cand[cand[:, 4] > self.min_score]
            kp = np.full((len(cand), 5, 2), np.nan, np.float32)
            out.append(Detections(cand[:, :4].copy(), kp, cand[:, 4].copy()))
        return out


def min_score(cfg: FacesConfig) -> float:
    """The score threshold in force: the config's, else the detector's measured default."""
    return DEFAULT_MIN_SCORE.get(cfg.detector, 0.5) if cfg.min_score is None else cfg.min_score


def make_detector(cfg: FacesConfig) -> Optional[Detector]:
    """The configured detector (None for `provided`: the manifest's landmarks are used)."""
    if cfg.detector is DetectorKind.PROVIDED:
        return None
    score = min_score(cfg)
    if cfg.detector in (DetectorKind.BLAZEFACE, DetectorKind.BLAZEFACE_BACK):
        from pipeline.blazeface import BlazeFace
        return BlazeFace(cfg, score)
    if cfg.detector is DetectorKind.SFD:
        return SFD(cfg, score)
    if cfg.detector is DetectorKind.RETINAFACE:
        from pipeline.retinaface import RetinaFace
        return RetinaFace(cfg, resolve_weights(cfg), score)
    raise DetectorError(f"unsupported detector {cfg.detector}")  # pragma: no cover
