"""The embedded default dataset: synthetic faces whose appearance is driven by their AU labels.

Labels come from expression episodes (EMFACS-like prototypes, paper's Table II, plus a
controlled-smile "embarrassment" episode) lasting 6-20 frames, so AUs have realistic durations
and co-occurrences. Each active AU moves the landmarks it moves on a real face (brows up or down,
lids, lip corners, chin) *and* draws the appearance change FACS describes for it: forehead
wrinkles (AU1 medial, AU2 lateral), glabellar furrows (AU4), cheek flush and crow's feet (AU6),
a tightened lower lid (AU7), nasolabial folds and bared upper teeth (AU10), smile lines (AU12),
dimples (AU14), lines down from the lip corners (AU15), chin-boss wrinkles (AU17), darker,
narrowed lips with tense lines above them (AU23), bulges above and below pressed lips (AU24).
The appearance changes are what a randomly initialised backbone's features carry: landmark
shifts of a few pixels alone were not learnable there (docs/demo.md has the measurements).

Each subject gets a skin tone (within a band), a face width and per-AU intensities (0.8-1.2);
each frame a small head pose and pixel noise; the background is the same for everyone, as in a
recording lab. Nuisance that only makes subjects differ is kept moderate on purpose: with a
background per subject and a wider tone range, held-out subjects were markedly harder
(docs/demo.md). The 68 landmarks drawn are written with the images, so the faces stage aligns
from them (detector 'provided'). About 3% of the frames show no face, to carry missing faces
through the pipeline. Written once per parameter set into `root`, with `subjects.csv` (each
subject's skin-tone half, `darker` or `lighter`: an example for `dataset.subjects`).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipeline.aus import AUSet
from pipeline.config import DatasetConfig
from pipeline.datasets import generic
from pipeline.manifest import ManifestReport

IMAGE_SIZE = 256
NO_FACE_RATE = 0.03
SHIFT = 4  # cv2 sub-pixel drawing: coordinates carry 4 fractional bits
LINE_WIDTH = 5.0  # wrinkles, furrows and folds, face units
# 68-point face in face units (inter-ocular ~64), image axes (y down). iBUG ordering.
_JAW = [(70 * np.cos(t), -10 + 95 * np.sin(t)) for t in np.linspace(np.pi, 0, 17)]
_BROW_R = [(-55 + 43 * s, -45 - 8 * np.sin(np.pi * s)) for s in np.linspace(0, 1, 5)]
_BROW_L = [(12 + 43 * s, -45 - 8 * np.sin(np.pi * s)) for s in np.linspace(0, 1, 5)]
_NOSE = [(0, -30), (0, -18), (0, -6), (0, 5), (-15, 15), (-8, 18), (0, 19), (8, 18), (15, 15)]
_EYE_R = [(-45, -25), (-37, -30), (-27, -30), (-19, -25), (-27, -21), (-37, -21)]
_EYE_L = [(19, -25), (27, -30), (37, -30), (45, -25), (37, -21), (27, -21)]
_MOUTH = [(-25, 45), (-15, 40), (-5, 38), (0, 39), (5, 38), (15, 40), (25, 45), (15, 51),
          (5, 54), (0, 54), (-5, 54), (-15, 51), (-20, 45), (-5, 43), (0, 43), (5, 43), (20, 45),
          (5, 47), (0, 47), (-5, 47)]
BASE = np.array(_JAW + _BROW_R + _BROW_L + _NOSE + _EYE_R + _EYE_L + _MOUTH, dtype=np.float32)

# AU -> list of (landmark indices, dx, dy): displacement at full intensity, face units.
_MOVES: dict[int, list[tuple[list[int], float, float]]] = {
    1: [([20, 21, 22, 23], 0, -8), ([19, 24], 0, -3)],
    2: [([17, 18, 25, 26], 0, -8)],
    4: [([17, 18, 19, 20, 21, 22, 23, 24, 25, 26], 0, 5), ([21], 4, 0), ([22], -4, 0)],
    6: [([40, 41, 46, 47], 0, -3), ([2, 3], 3, -4), ([13, 14], -3, -4)],
    7: [([37, 38, 43, 44], 0, 2), ([40, 41, 46, 47], 0, -2)],
    10: [([49, 50, 51, 52, 53, 61, 62, 63], 0, -5)],
    12: [([48, 60], -6, -6), ([54, 64], 6, -6)],
    14: [([48, 60], 3, 0), ([54, 64], -3, 0)],
    15: [([48, 60], 0, 6), ([54, 64], 0, 6)],
    17: [([6, 7, 8, 9, 10], 0, -5), ([55, 56, 57, 58, 59], 0, -3)],
    23: [([48, 60], 4, 0), ([54, 64], -4, 0), ([49, 50, 51, 52, 53], 0, 1.5),
         ([55, 56, 57, 58, 59], 0, -1.5)],
    24: [([49, 50, 51, 52, 53], 0, 3), ([55, 56, 57, 58, 59], 0, -4)],
}


def _arc(x0: float, x1: float, y: float, bend: float, n: int = 7) -> np.ndarray:
    """Points of a gentle arc from (x0, y) to (x1, y) bulging by `bend` (face units, y down)."""
    s = np.linspace(0, 1, n)
    return np.stack([x0 + (x1 - x0) * s, y - bend * np.sin(np.pi * s)], 1)


def _mirror(pts: np.ndarray) -> np.ndarray:
    return pts * np.array([-1, 1], np.float32)


# AU -> the lines (wrinkles, furrows, folds) of its FACS appearance changes, drawn darker than the
# skin in proportion to the AU's intensity, in face units. AU6's flush, AU7's lids, AU10's teeth and
# AU23's lip colour are drawn in _render.
_LINES: dict[int, list[np.ndarray]] = {
    1: [_arc(-22, 22, y, 3) for y in (-64, -73, -82)],  # horizontal wrinkles, mid forehead
    2: [m(_arc(-62, -30, y, 4)) for y in (-62, -71) for m in (lambda p: p, _mirror)],  # lateral
    4: [np.array([[x, -52], [x * 0.8, -30]]) for x in (-8, 8)] + [_arc(-14, 14, -33, -2)],  # furrows
    6: [m(np.array([[-47, -25], [-62, y]])) for y in (-34, -25, -16)  # crow's feet
        for m in (lambda p: p, _mirror)],
    7: [],  # the tightened lower lid is drawn with the eyes
    10: [m(np.array([[-16, 12], [-25, 25], [-30, 40]])) for m in (lambda p: p, _mirror)],  # nasolabial
    12: [m(np.array([[-30, 28], [-38, 38], [-36, 50]])) for m in (lambda p: p, _mirror)],  # smile lines
    14: [m(np.array([[-31, 38], [-31, 52]])) for m in (lambda p: p, _mirror)],  # dimples
    15: [m(np.array([[-25, 52], [-28, 62], [-30, 72]])) for m in (lambda p: p, _mirror)],  # marionette
    17: [_arc(-14, 14, 68, -4), _arc(-10, 10, 76, -3)],  # chin boss wrinkling
    23: [np.array([[x, 29], [x * 1.1, 36]]) for x in (-13, -5, 5, 13)],  # tense upper lip
    24: [_arc(-18, 18, 33, 2), _arc(-16, 16, 60, -2)],  # bulges above and below pressed lips
}


# Expression prototypes: AU -> probability of being on during an episode.
_EPISODES: list[dict[int, float]] = [
    {},  # neutral
    {6: .8, 7: .5, 10: .6, 12: .95, 14: .3},  # happiness
    {1: .7, 4: .7, 15: .7, 17: .6, 24: .3},  # sadness
    {1: .9, 2: .9},  # surprise
    {4: .9, 7: .7, 17: .5, 23: .7, 24: .5},  # anger
    {4: .5, 6: .4, 7: .5, 10: .8, 17: .4},  # disgust
    {4: .6, 6: .7, 7: .8, 10: .6, 12: .3, 14: .4, 23: .4},  # pain
    {2: .3, 12: .7, 14: .6, 24: .6},  # embarrassment (a controlled smile: lips pressed)
]


def _labels(rng: np.random.Generator, n: int, aus: tuple[int, ...]) -> np.ndarray:
    out = np.zeros((n, len(aus)), dtype=np.int8)
    t = 0
    while t < n:
        dur = int(rng.integers(6, 21))
        proto = _EPISODES[int(rng.integers(len(_EPISODES)))]
        on = [i for i, a in enumerate(aus) if rng.random() < proto.get(a, 0.03)]
        out[t:t + dur, on] = 1
        t += dur
    return out


def _shape(labels_row: np.ndarray, aus: tuple[int, ...], gains: np.ndarray) -> np.ndarray:
    pts = BASE.copy()
    for i, a in enumerate(aus):
        if labels_row[i]:
            for idx, dx, dy in _MOVES.get(a, []):
                pts[idx] += np.array([dx, dy], dtype=np.float32) * gains[i]
    return pts


def _render(units: np.ndarray, to_img, scale: float, skin: np.ndarray, bg: np.ndarray,
            strength: dict[int, float]) -> np.ndarray:
    """Draw the face whose landmarks are `units` (face units); to_img maps units to pixels."""
    img = bg.copy()

    def px(q) -> np.ndarray:
        return np.round(to_img(np.asarray(q, np.float32)) * (1 << SHIFT)).astype(np.int32)

    def th(t: float) -> int:
        return max(1, int(round(t * scale)))

    def col(c) -> tuple:
        return tuple(int(v) for v in np.clip(c, 0, 255))

    def radius(r: float) -> int:
        return int(r * scale * (1 << SHIFT))

    aa = cv2.LINE_AA
    top = units[17:27, 1].min() - 40
    forehead = np.array([(x, top + 0.008 * x * x) for x in np.linspace(70, -70, 9)])
    cv2.fillPoly(img, [px(np.vstack([units[:17], forehead]))], col(skin), aa, SHIFT)
    for au, k in strength.items():  # appearance changes under the features
        if au == 6:  # raised cheeks: a flush on the cheek
            for c in ((-38, 5), (38, 5)):
                cv2.ellipse(img, tuple(px(c)), (radius(16), radius(11)), 0, 0, 360,
                            col(skin * (1 - 0.25 * k) + np.array([90, 0, 0]) * k), -1, aa, SHIFT)
        for line in _LINES.get(au, []):
            cv2.polylines(img, [px(line)], False, col(skin * (1 - 0.6 * k)), th(LINE_WIDTH), aa,
                          SHIFT)
    p = units
    for eye in (p[36:42], p[42:48]):
        cv2.fillPoly(img, [px(eye)], (245, 245, 245), aa, SHIFT)
        cv2.circle(img, tuple(px(eye.mean(0))), radius(4), (60, 40, 30), -1, aa, SHIFT)
        if 7 in strength:  # tightened lids: a thick lower lid
            cv2.polylines(img, [px(eye[[3, 4, 5, 0]])], False, col(skin * (1 - 0.5 * strength[7])),
                          th(4), aa, SHIFT)
    cv2.polylines(img, [px(p[17:22]), px(p[22:27])], False, (70, 50, 40), th(4), aa, SHIFT)
    cv2.polylines(img, [px(p[27:31]), px(p[31:36])], False, col(skin * 0.7), th(2), aa, SHIFT)
    lip = np.array([170, 70, 80]) * (1 - 0.35 * strength.get(23, 0))  # tightened lips darken
    cv2.fillPoly(img, [px(p[48:60])], col(lip), aa, SHIFT)
    cv2.fillPoly(img, [px(p[60:68])], (90, 30, 40), aa, SHIFT)
    if 10 in strength:  # raised upper lip bares the upper teeth
        teeth = np.vstack([p[60:65], p[64] + [0, 3], p[60] + [0, 3]])
        cv2.fillPoly(img, [px(teeth)], (235, 235, 225), aa, SHIFT)
    return img


TONE_SPLIT = 0.625  # the middle of the tone band: subjects.csv's skin_tone darker / lighter
SUBJECTS_FILE = "subjects.csv"


def generate(root: Path, n_subjects: int, n_frames: int, seed: int, au_set: AUSet) -> Path:
    """Write images and `manifest.csv` under root (idempotent per parameter set)."""
    params = {"n_subjects": n_subjects, "n_frames": n_frames, "seed": seed, "au_set": au_set.value,
              "version": 4}  # 4: subjects.csv
    stamp, manifest = root / "demo.json", root / "manifest.csv"
    if manifest.exists() and stamp.exists() and json.loads(stamp.read_text()) == params:
        return manifest
    rng = np.random.default_rng(seed)
    aus = au_set.numbers
    rows, subjects = [], []
    grad = np.linspace(0, 1, IMAGE_SIZE, dtype=np.float32)[:, None, None]
    bg = (np.array([70, 72, 76]) * (0.7 + 0.3 * grad)).astype(np.uint8).repeat(IMAGE_SIZE, 1)
    for s in range(n_subjects):
        subject = f"S{s + 1:02d}"
        tone = rng.uniform(0.45, 0.8)  # one tone axis: darker to lighter skin, within a band
        subjects.append({"subject": subject, "skin_tone": "darker" if tone < TONE_SPLIT else "lighter"})
        skin = np.array([110, 70, 50]) + tone * np.array([130, 130, 130])
        width = rng.uniform(0.95, 1.05)
        gains = rng.uniform(0.8, 1.2, len(aus)).astype(np.float32)
        labels = _labels(rng, n_frames, aus)
        folder = root / subject / "T1"
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(n_frames):
            ang = np.deg2rad(rng.normal(0, 4))
            scale = rng.uniform(0.8, 0.9)
            rot = scale * np.array([[np.cos(ang) * width, -np.sin(ang)], [np.sin(ang) * width, np.cos(ang)]])
            centre = np.array([IMAGE_SIZE / 2, IMAGE_SIZE / 2 + 8]) + rng.normal(0, 5, 2)
            units = _shape(labels[f], aus, gains)
            pts = units @ rot.T + centre
            no_face = rng.random() < NO_FACE_RATE
            strength = {a: float(gains[i]) for i, a in enumerate(aus) if labels[f, i]}
            img = bg.copy() if no_face else _render(units, lambda q: q @ rot.T + centre, scale,
                                                    skin, bg, strength)
            img = np.clip(img + rng.normal(0, 3, img.shape).astype(np.float32), 0, 255).astype(np.uint8)
            name = folder / f"{f:04d}.jpg"
            cv2.imwrite(str(name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
            row = {"subject": subject, "session": "T1", "frame": f,
                   "image_path": str(name.relative_to(root)),
                   "landmarks": "" if no_face else " ".join(f"{v:.2f}" for v in pts.ravel())}
            row.update({c: int(labels[f, i]) for i, c in enumerate(au_set.columns)})
            rows.append(row)
    pd.DataFrame(rows).to_csv(manifest, index=False)
    pd.DataFrame(subjects).to_csv(root / SUBJECTS_FILE, index=False)  # dataset.subjects: groups
    stamp.write_text(json.dumps(params))
    return manifest


def read(cfg: DatasetConfig, report: ManifestReport) -> pd.DataFrame:
    manifest = generate(cfg.root, cfg.demo_subjects, cfg.demo_frames_per_subject, cfg.demo_seed,
                        cfg.au_set)
    return generic.read(cfg.model_copy(update={"manifest_file": manifest}), report)
