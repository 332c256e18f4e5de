"""The embedded default dataset: synthetic faces whose geometry is driven by their AU labels.

Each subject gets a face shape, skin tone and background; each frame a small head pose. Labels
come from expression episodes (EMFACS-like prototypes, paper's Table II) lasting 6-20 frames, so
AUs have realistic durations and co-occurrences. The 68 landmarks drawn are written with the
images, so the faces stage aligns from them (detector 'provided'). A few frames show no face,
to carry missing faces through the pipeline. Written once per parameter set into `root`.
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

IMAGE_SIZE = 288
NO_FACE_RATE = 0.03
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
    23: [([48, 60], 4, 0), ([54, 64], -4, 0)],
    24: [([49, 50, 51, 52, 53], 0, 2), ([55, 56, 57, 58, 59], 0, -3)],
}
# Expression prototypes: AU -> probability of being on during an episode.
_EPISODES: list[dict[int, float]] = [
    {},  # neutral
    {6: .8, 7: .5, 10: .6, 12: .95, 14: .3},  # happiness
    {1: .7, 4: .7, 15: .7, 17: .6},  # sadness
    {1: .9, 2: .9},  # surprise
    {4: .9, 7: .7, 17: .5, 23: .6, 24: .6},  # anger
    {4: .5, 6: .4, 7: .5, 10: .8, 17: .4},  # disgust
    {4: .6, 6: .7, 7: .8, 10: .6, 12: .3, 14: .4},  # pain
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


def _render(pts: np.ndarray, skin: tuple, bg: np.ndarray, active: set[int]) -> np.ndarray:
    img = bg.copy()
    p = np.round(pts).astype(np.int32)
    forehead = [(int(x), int(2 * p[19][1] - p[36][1] - 10)) for x, _ in p[16::-4]]
    cv2.fillPoly(img, [np.vstack([p[:17], np.array(forehead)])], skin, cv2.LINE_AA)
    if 6 in active:  # raised cheeks flush
        for c in (p[41] + p[3]) // 2, (p[46] + p[13]) // 2:
            cv2.circle(img, tuple(int(v) for v in c), 9, (200, 110, 110), -1, cv2.LINE_AA)
    for eye in (p[36:42], p[42:48]):
        cv2.fillPoly(img, [eye], (245, 245, 245), cv2.LINE_AA)
        cv2.circle(img, tuple(int(v) for v in eye.mean(0)), 4, (60, 40, 30), -1, cv2.LINE_AA)
    cv2.polylines(img, [p[17:22], p[22:27]], False, (70, 50, 40), 4, cv2.LINE_AA)
    cv2.polylines(img, [p[27:31], p[31:36]], False, (150, 100, 90), 2, cv2.LINE_AA)
    cv2.fillPoly(img, [p[48:60]], (170, 70, 80), cv2.LINE_AA)
    cv2.fillPoly(img, [p[60:68]], (90, 30, 40), cv2.LINE_AA)
    if 14 in active:  # dimples
        for c in (p[48] + [-5, 0], p[54] + [5, 0]):
            cv2.line(img, tuple(int(v) for v in c), tuple(int(v) for v in c + [0, 6]), (140, 90, 80), 2)
    return img


def generate(root: Path, n_subjects: int, n_frames: int, seed: int, au_set: AUSet) -> Path:
    """Write images and `manifest.csv` under root (idempotent per parameter set)."""
    params = {"n_subjects": n_subjects, "n_frames": n_frames, "seed": seed, "au_set": au_set.value,
              "version": 1}
    stamp, manifest = root / "demo.json", root / "manifest.csv"
    if manifest.exists() and stamp.exists() and json.loads(stamp.read_text()) == params:
        return manifest
    rng = np.random.default_rng(seed)
    aus = au_set.numbers
    rows = []
    for s in range(n_subjects):
        subject = f"S{s + 1:02d}"
        tone = rng.uniform(0, 1)  # one tone axis: dark to light skin
        skin = tuple(int(v) for v in np.array([110, 70, 50]) + tone * np.array([130, 130, 130]))
        grad = np.linspace(0, 1, IMAGE_SIZE, dtype=np.float32)[:, None, None]
        bg = (rng.integers(20, 120, 3) * (0.6 + 0.4 * grad)).astype(np.uint8).repeat(IMAGE_SIZE, 1)
        width = rng.uniform(0.9, 1.1)
        gains = rng.uniform(0.8, 1.2, len(aus)).astype(np.float32)
        labels = _labels(rng, n_frames, aus)
        folder = root / subject / "T1"
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(n_frames):
            ang = np.deg2rad(rng.normal(0, 4))
            scale = rng.uniform(0.9, 1.05)
            rot = scale * np.array([[np.cos(ang) * width, -np.sin(ang)], [np.sin(ang) * width, np.cos(ang)]])
            centre = np.array([IMAGE_SIZE / 2, IMAGE_SIZE / 2 + 8]) + rng.normal(0, 6, 2)
            pts = _shape(labels[f], aus, gains) @ rot.T + centre
            no_face = rng.random() < NO_FACE_RATE
            active = {a for i, a in enumerate(aus) if labels[f, i]}
            img = bg.copy() if no_face else _render(pts, skin, bg, active)
            img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
            name = folder / f"{f:04d}.jpg"
            cv2.imwrite(str(name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
            row = {"subject": subject, "session": "T1", "frame": f,
                   "image_path": str(name.relative_to(root)),
                   "landmarks": "" if no_face else " ".join(f"{v:.2f}" for v in pts.ravel())}
            row.update({c: int(labels[f, i]) for i, c in enumerate(au_set.columns)})
            rows.append(row)
    pd.DataFrame(rows).to_csv(manifest, index=False)
    stamp.write_text(json.dumps(params))
    return manifest


def read(cfg: DatasetConfig, report: ManifestReport) -> pd.DataFrame:
    manifest = generate(cfg.root, cfg.demo_subjects, cfg.demo_frames_per_subject, cfg.demo_seed,
                        cfg.au_set)
    return generic.read(cfg.model_copy(update={"manifest_file": manifest}), report)
