"""Face detection behind one interface: `Detector.detect(image) -> Detections`.

Implementations use face-alignment's own modules: BlazeFace front/back (boxes + 6 keypoints,
mapped to the 5-point order) and SFD (boxes only). `provided_detections` turns a manifest's
landmarks / box into the same type, so alignment never cares where a face came from.

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
from pipeline.config import DetectorKind, FaceRule, FacesConfig
from pipeline.errors import UserError

NMS_IOU = 0.3  # BlazeFace's own suppression threshold, reused to merge tiles
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


def square_tiles(h: int, w: int) -> list[tuple[int, int, int]]:
    """(x0, y0, side) squares of side min(h, w) covering the image, overlapping by at least half.

    BlazeFace sees a square: one tile for square images, 2+ along the long side otherwise, so
    faces near the edges of wide frames are not cropped away (face-alignment's own wrapper only
    looks at the centre square). Any face up to half the short side fits wholly in one tile.
    """
    side, long = min(h, w), max(h, w)
    n = 1 if long == side else int(np.ceil((long - side) / (side / 2))) + 1
    offsets = np.round(np.linspace(0, long - side, n)).astype(int)
    return [(int(o), 0, side) if w >= h else (0, int(o), side) for o in offsets]


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
    """face-alignment's own download addresses for the detector's files."""
    if kind is DetectorKind.SFD:
        from face_alignment.detection.sfd.sfd_detector import models_urls
        return {"weights": models_urls["s3fd"]}
    from face_alignment.detection.blazeface.blazeface_detector import models_urls
    pre = "blazeface_back" if kind is DetectorKind.BLAZEFACE_BACK else "blazeface"
    return {"weights": models_urls[f"{pre}_weights"], "anchors": models_urls[f"{pre}_anchors"]}


def resolve_weights(cfg: FacesConfig) -> dict[str, Path]:
    """role -> local file: the config's paths, else face-alignment's downloader (torch hub cache).

    BlazeFace with weights but no anchors path looks for the standard anchors file beside them.
    """
    urls = _download_urls(cfg.detector)
    if cfg.detector_weights is not None:
        files = {"weights": Path(cfg.detector_weights)}
        if "anchors" in urls:
            default = Path(urls["anchors"].split("?")[0]).name
            files["anchors"] = Path(cfg.detector_anchors or Path(cfg.detector_weights).with_name(default))
        for role, path in files.items():
            if not path.is_file():
                raise DetectorError(f"faces.detector_{role}: file not found: {path}")
        return files
    from face_alignment.utils import load_file_from_url

    files = {}
    for role, url in urls.items():
        try:
            files[role] = Path(load_file_from_url(url, progress=False))
        except Exception as e:  # no internet, proxy, disk: say what to do instead
            raise DetectorError(
                f"could not download the {cfg.detector.value} {role} from {url} ({e}); offline, "
                f"set faces.detector_weights (and faces.detector_anchors) to local files") from None
    return files


# -- implementations --------------------------------------------------------------------------
class BlazeFace(Detector):
    """BlazeFace front (128 px input) or back (256 px) camera model, face-alignment's network.

    Its 6 keypoints (subject's right eye, left eye, nose tip, mouth centre, right and left ear,
    i.e. image-left first for a frontal face) map to the 5-point order: eyes and nose as given,
    mouth corners estimated from the mouth centre (`mouth_corners`). Ears are dropped.
    """

    def __init__(self, cfg: FacesConfig):
        import torch
        from face_alignment.detection.blazeface.net_blazeface import BlazeFace as Net

        self.kind = cfg.detector
        back = cfg.detector is DetectorKind.BLAZEFACE_BACK
        self.files = resolve_weights(cfg)
        self.input_size = 256 if back else 128
        try:
            net = Net(back_model=back)
            net.load_state_dict(torch.load(self.files["weights"], map_location="cpu", weights_only=True))
            net.load_anchors_from_npy(np.load(self.files["anchors"]), "cpu")
        except Exception as e:
            raise DetectorError(f"{self.files['weights']} / {self.files['anchors']}: not "
                                f"{self.kind.value} weights and anchors ({e})") from None
        net.min_score_thresh = cfg.min_score
        net.min_suppression_threshold = NMS_IOU
        self.net = net.eval()
        self.max_roll_deg = cfg.max_roll_deg

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        import cv2

        n = self.input_size
        tiles, owner = [], []
        for i, img in enumerate(images):
            h, w = img.shape[:2]
            for x0, y0, side in square_tiles(h, w):
                # the resize of face-alignment's resize_and_crop_image (INTER_AREA); its own
                # width rounding can give 127 px for a square, so the size is set exactly here
                tile = np.ascontiguousarray(img[y0:y0 + side, x0:x0 + side])
                tiles.append(cv2.resize(tile, (n, n), interpolation=cv2.INTER_AREA))
                owner.append((i, x0, y0, side))
        preds = self.net.predict_on_batch(np.stack(tiles)) if tiles else []  # list of (k, 17)
        parts: list[list[np.ndarray]] = [[] for _ in images]
        for (i, x0, y0, side), p in zip(owner, preds):
            p = p.cpu().numpy().astype(np.float64)
            if len(p):
                parts[i].append(self._to_source(p, x0, y0, side))
        return [plausible(self._merge(rows), self.max_roll_deg) for rows in parts]

    @staticmethod
    def _to_source(p: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
        """(k, 17) normalised tile predictions -> (k, 4 + 10 + 1) source pixels, 5-point order."""
        shift = np.array([x0, y0])
        boxes = p[:, [1, 0, 3, 2]] * side + np.tile(shift, 2)  # ymin,xmin,.. -> x0,y0,x1,y1
        kp6 = p[:, 4:16].reshape(-1, 6, 2) * side + shift  # (k, 6, 2)
        corners = np.stack([mouth_corners(k[0], k[1], k[3]) for k in kp6])  # (k, 2, 2)
        kp5 = np.concatenate([kp6[:, :3], corners], axis=1).reshape(len(p), 10)
        return np.concatenate([boxes, kp5, p[:, 16:17]], axis=1)

    @staticmethod
    def _merge(rows: list[np.ndarray]) -> Detections:
        if not rows:
            return Detections.empty()
        a = np.concatenate(rows).astype(np.float32)
        a = a[nms(a[:, :4], a[:, 14])]
        return Detections(a[:, :4], a[:, 4:14].reshape(-1, 5, 2), a[:, 14])


class SFD(Detector):
    """S3FD at full image resolution (face-alignment's network and decoding): boxes only."""

    def __init__(self, cfg: FacesConfig):
        import torch
        from face_alignment.detection.sfd.net_s3fd import s3fd

        self.kind = cfg.detector
        self.files = resolve_weights(cfg)
        self.min_score = cfg.min_score
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


def make_detector(cfg: FacesConfig) -> Optional[Detector]:
    """The configured detector (None for `provided`: the manifest's landmarks are used)."""
    if cfg.detector is DetectorKind.PROVIDED:
        return None
    if cfg.detector in (DetectorKind.BLAZEFACE, DetectorKind.BLAZEFACE_BACK):
        return BlazeFace(cfg)
    if cfg.detector is DetectorKind.SFD:
        return SFD(cfg)
    raise DetectorError(f"unsupported detector {cfg.detector}")  # pragma: no cover
