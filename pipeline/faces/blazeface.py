"""BlazeFace (face-alignment's network) over square tiles, with a pyramid of finer tiles.

BlazeFace sees a square of 128 px (front model) or 256 px (back model). Level 0 covers the image
with squares of its short side (`square_tiles`); level l >= 1 adds a grid of squares of side
short / 2**l overlapping by half in both directions (`pyramid_tiles`), so a face of 10% of the
short side fills 20% of a level-1 tile instead of 10%. Finer tiles only add faces the coarser
level could not see whole, so their detections are kept only when small for the tile and not cut
by an inner tile edge (`_keep_in_tile`) or smaller than faces.min_face_px. They also fire on
lettering (606 candidates scoring 0.5-0.9 on the title frames of the shared videos), so each is
confirmed by both BlazeFace models re-run on a square centred on it at their own working scale
(`confirm_scores`): every one of those 606 got below 0.53 from at least one model, while 121 of
126 real faces (the media and the synthetic size sweep) got at least 0.55 from both; the 5 lost
were at 4-6% of the short side. Level-0 faces are not re-checked (faces.min_score decides).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.config import DetectorKind, FacesConfig, TilePyramid
from pipeline.faces.geometry import NMS_IOU, iou_matrix, mouth_corners, nms, plausible
from pipeline.faces.types import Detections, Detector, DetectorError
from pipeline.faces.weights import verifier_kind

# A finer tile keeps faces up to this fraction of its side: anything bigger fits wholly in a
# tile of the level above (twice the side, half overlap), which sees it at a better scale.
MAX_FACE_PER_TILE = 0.6
EDGE_PX = 1.0  # a box within this many source pixels of an inner tile edge is cut by it
TILE_BATCH = 256  # tiles per network call (128 px tiles: ~50 MB of input)
# Confirmation of a finer-tile face: a square centred on it in which the face is this fraction
# of the side, per model (their working scales: ~32 px of the front model's 128, ~38 of 256).
CONFIRM_FACE_FRAC = {DetectorKind.BLAZEFACE: 0.25, DetectorKind.BLAZEFACE_BACK: 0.15}
CONFIRM_MIN_SCORE = 0.55  # both models must score the face at least this (measured: docstring)
CONFIRM_FLOOR = 0.2  # anchors blended into a confirming score (a face needs broad support)
# Anchors blended into a detection's score (the project's old default min_score): fixed, so that
# a face's score does not move with faces.min_score above it.
CANDIDATE_FLOOR = 0.5
CONFIRM_IOU = 0.4  # the re-detection must overlap the face this much


def square_tiles(h: int, w: int) -> list[tuple[int, int, int]]:
    """(x0, y0, side) squares of side min(h, w) covering the image, overlapping by at least half.

    One tile for square images, 2+ along the long side otherwise, so faces near the edges of wide
    frames are not cropped away (face-alignment's own wrapper only looks at the centre square).
    Any face up to half the short side fits wholly in one tile.
    """
    side, long = min(h, w), max(h, w)
    n = 1 if long == side else int(np.ceil((long - side) / (side / 2))) + 1
    offsets = np.round(np.linspace(0, long - side, n)).astype(int)
    return [(int(o), 0, side) if w >= h else (0, int(o), side) for o in offsets]


def _starts(length: int, side: int) -> np.ndarray:
    """Tile starts along one axis: first at 0, last at length - side, steps of at most side / 2."""
    n = 1 if length <= side else int(np.ceil((length - side) / (side / 2))) + 1
    return np.round(np.linspace(0, max(length - side, 0), n)).astype(int)


def pyramid_tiles(h: int, w: int, levels: int, min_side: int) -> list[tuple[int, int, int, int]]:
    """(x0, y0, side, level) tiles: level 0 is `square_tiles`; level l a half-overlapping grid of
    squares of side min(h, w) // 2**l. Levels whose side would fall below `min_side` (the network
    input: a smaller tile would only be upsampled) are left out."""
    out = [(x, y, s, 0) for x, y, s in square_tiles(h, w)]
    for level in range(1, levels):
        side = min(h, w) // 2 ** level
        if side < min_side:
            break
        out += [(int(x), int(y), side, level) for y in _starts(h, side) for x in _starts(w, side)]
    return out


def _side(rows: np.ndarray) -> np.ndarray:
    """(k,) longer box side of (k, 15) rows."""
    return np.maximum(rows[:, 2] - rows[:, 0], rows[:, 3] - rows[:, 1])


def _keep_in_tile(rows: np.ndarray, x0: int, y0: int, side: int, h: int, w: int) -> np.ndarray:
    """Mask of (k, 15) source-pixel rows a finer tile may keep: small for the tile, and not
    crossing an edge of the tile that lies inside the image (that face is whole elsewhere)."""
    b = rows[:, :4]
    ok = _side(rows) <= MAX_FACE_PER_TILE * side
    if x0 > 0:
        ok &= b[:, 0] > x0 + EDGE_PX
    if y0 > 0:
        ok &= b[:, 1] > y0 + EDGE_PX
    if x0 + side < w:
        ok &= b[:, 2] < x0 + side - EDGE_PX
    if y0 + side < h:
        ok &= b[:, 3] < y0 + side - EDGE_PX
    return ok


class _Net:
    """One BlazeFace network with its anchors; `run` maps squares of images to its raw output."""

    def __init__(self, kind: DetectorKind, weights, anchors):
        import torch
        from face_alignment.detection.blazeface.net_blazeface import BlazeFace as Net

        back = kind is DetectorKind.BLAZEFACE_BACK
        self.size = 256 if back else 128
        try:
            net = Net(back_model=back)
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            net.load_anchors_from_npy(np.load(anchors), "cpu")
        except Exception as e:
            raise DetectorError(f"{weights} / {anchors}: not {kind.value} weights and anchors "
                                f"({e})") from None
        net.min_suppression_threshold = NMS_IOU
        self.net = net.eval()

    def run(self, images: Sequence[np.ndarray], squares: list[tuple[int, float, float, float]],
            floor: float) -> list[np.ndarray]:
        """squares: (image index, x0, y0, side) -> per square (k, 17) normalised ymin, xmin, ymax,
        xmax, 6 keypoints, score. Anchors scoring below `floor` are dropped before the network's
        blending suppression, whose score is the mean of the blended anchors: so a face's score
        depends on the floor, and each use keeps its own fixed one."""
        self.net.min_score_thresh = floor
        crops = [_square(images[i], x0, y0, side, self.size) for i, x0, y0, side in squares]
        out = []
        for s in range(0, len(crops), TILE_BATCH):
            out += [p.cpu().numpy().astype(np.float64)
                    for p in self.net.predict_on_batch(np.stack(crops[s:s + TILE_BATCH]))]
        return out


def _square(img: np.ndarray, x0: float, y0: float, side: float, n: int) -> np.ndarray:
    """(n, n, 3) resize of the square at (x0, y0); parts outside the image repeat its edge."""
    import cv2

    h, w = img.shape[:2]
    x0, y0, s = int(round(x0)), int(round(y0)), max(int(round(side)), 1)
    pad = max(0, -x0, -y0, x0 + s - w, y0 + s - h)
    if pad:
        img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    tile = np.ascontiguousarray(img[y0:y0 + s, x0:x0 + s])
    # INTER_AREA as face-alignment's resize_and_crop_image; its own width rounding can give
    # 127 px for a square, so the size is set exactly here
    return cv2.resize(tile, (n, n), interpolation=cv2.INTER_AREA if s >= n else cv2.INTER_LINEAR)


def _to_source(p: np.ndarray, x0: float, y0: float, side: float) -> np.ndarray:
    """(k, 17) normalised square predictions -> (k, 4 + 10 + 1) source pixels, 5-point order."""
    shift = np.array([x0, y0])
    boxes = p[:, [1, 0, 3, 2]] * side + np.tile(shift, 2)  # ymin,xmin,.. -> x0,y0,x1,y1
    kp6 = p[:, 4:16].reshape(-1, 6, 2) * side + shift  # (k, 6, 2)
    corners = np.stack([mouth_corners(k[0], k[1], k[3]) for k in kp6])  # (k, 2, 2)
    kp5 = np.concatenate([kp6[:, :3], corners], axis=1).reshape(len(p), 10)
    return np.concatenate([boxes, kp5, p[:, 16:17]], axis=1)


class BlazeFace(Detector):
    """BlazeFace front (128 px input) or back camera model (256 px), face-alignment's network.

    Its 6 keypoints (subject's right eye, left eye, nose tip, mouth centre, right and left ear,
    i.e. image-left first for a frontal face) map to the 5-point order: eyes and nose as given,
    mouth corners estimated from the mouth centre (`mouth_corners`). Ears are dropped.
    """

    def __init__(self, cfg: FacesConfig, files: dict[str, Path], min_score: float):
        super().__init__(cfg, files, min_score)
        self.floor = min(min_score, CANDIDATE_FLOOR)
        self.net = _Net(cfg.detector, self.files["weights"], self.files["anchors"])
        self.min_face_px = cfg.min_face_px
        self.pyramid = cfg.tile_pyramid
        self.levels = cfg.tile_levels
        self.confirm: dict[DetectorKind, _Net] = {}
        other = verifier_kind(cfg)
        if other is not None:
            self.confirm = {cfg.detector: self.net, other: _Net(
                other, self.files["verifier_weights"], self.files["verifier_anchors"])}

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        rows = self._tiles(images, range(len(images)), coarse=True)  # per image (k, 15)
        found = [plausible(_merge([r]), self.max_roll_deg) for r in rows]
        if not self.confirm:
            return found
        todo = [i for i in range(len(images)) if self.pyramid is TilePyramid.ALWAYS or not len(found[i])]
        fine = self._tiles(images, todo, coarse=False)
        for i, extra in zip(todo, fine):
            if len(extra):
                extra = extra[self._confirmed(images[i], extra)]
                found[i] = plausible(_merge([rows[i], extra]), self.max_roll_deg)
        return found

    def detect_video_batch(self, images: Sequence[np.ndarray], gate) -> list[Detections]:
        """detect_batch, with the finer tiles on face-free frames only where `gate` allows
        (pipeline/faces/gate.py); a face they find opens the frames after it, so this loops."""
        if not self.confirm or self.pyramid is TilePyramid.ALWAYS or gate is None:
            found = self.detect_batch(images)
            if gate is not None:
                gate.advance(len(images), [bool(len(d)) for d in found], 0, 0)
            return found
        rows = self._tiles(images, range(len(images)), coarse=True)
        found = [plausible(_merge([r]), self.max_roll_deg) for r in rows]
        cheap_empty = sum(not len(d) for d in found)
        done: set[int] = set()
        while True:
            faces = [bool(len(d)) for d in found]
            todo = [i for i in range(len(images)) if not faces[i] and i not in done and gate.allows(
                gate.position + i, gate.last_face_before(gate.position + i, faces))]
            if not todo:
                break
            done.update(todo)
            for i, extra in zip(todo, self._tiles(images, todo, coarse=False)):
                if len(extra):
                    extra = extra[self._confirmed(images[i], extra)]
                    found[i] = plausible(_merge([rows[i], extra]), self.max_roll_deg)
        gate.advance(len(images), [bool(len(d)) for d in found], len(done), cheap_empty)
        return found

    def _tiles(self, images: Sequence[np.ndarray], which: Sequence[int], coarse: bool) -> list[np.ndarray]:
        """Per image in `which`: (k, 15) source-pixel rows with score >= min_score from level 0
        (coarse) or from the finer levels, the latter filtered by `_keep_in_tile`."""
        squares, meta = [], []
        for j, i in enumerate(which):
            h, w = images[i].shape[:2]
            for x0, y0, side, level in pyramid_tiles(h, w, 1 if coarse else self.levels, self.net.size):
                if coarse or level > 0:
                    squares.append((i, x0, y0, side))
                    meta.append((j, h, w, level))
        out: list[list[np.ndarray]] = [[np.zeros((0, 15))] for _ in which]
        preds = self.net.run(images, squares, self.floor)
        for (i, x0, y0, side), (j, h, w, level), p in zip(squares, meta, preds):
            r = _to_source(p, x0, y0, side) if len(p) else np.zeros((0, 15))
            r = r[r[:, 14] >= self.min_score]
            if level > 0:  # finer tiles add only whole faces that faces.min_face_px keeps
                r = r[_keep_in_tile(r, x0, y0, side, h, w) & (_side(r) >= self.min_face_px)]
            out[j].append(r)
        return [np.concatenate(r) for r in out]

    def _confirmed(self, img: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Mask of (k, 15) faces that every model confirms (`confirm_scores` >= CONFIRM_MIN_SCORE)."""
        return (self.confirm_scores(img, rows) >= CONFIRM_MIN_SCORE).all(axis=1)

    def confirm_scores(self, img: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(k, models) best score of each model's re-detection overlapping the face (IoU >=
        CONFIRM_IOU) on a square centred on it at the model's working scale; 0 when none."""
        out = np.zeros((len(rows), len(self.confirm)))
        centre = (rows[:, :2] + rows[:, 2:4]) / 2  # (k, 2)
        for m, (kind, net) in enumerate(self.confirm.items()):
            side = np.max(rows[:, 2:4] - rows[:, :2], axis=1) / CONFIRM_FACE_FRAC[kind]  # (k,)
            squares = [(0, c[0] - s / 2, c[1] - s / 2, s) for c, s in zip(centre, side)]
            for k, (sq, p) in enumerate(zip(squares, net.run([img], squares, CONFIRM_FLOOR))):
                if len(p):
                    again = _to_source(p, *sq[1:])
                    hit = iou_matrix(again[:, :4], rows[k:k + 1, :4])[:, 0] >= CONFIRM_IOU
                    out[k, m] = again[hit, 14].max(initial=0.0)
        return out


def _merge(parts: list[np.ndarray]) -> Detections:
    a = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, 15), np.float32)
    if not len(a):
        return Detections.empty()
    a = a[nms(a[:, :4], a[:, 14])]
    return Detections(a[:, :4], a[:, 4:14].reshape(-1, 5, 2), a[:, 14])
