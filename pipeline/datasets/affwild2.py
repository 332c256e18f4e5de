"""Aff-Wild2, ABAW AU-detection track.

Labels: `{root}/Train_Set/{video}.txt` and `{root}/Validation_Set/{video}.txt`. Line 1 is the
header (`AU1,AU2,AU4,...`), then line i+1 holds frame i (1-based); values 0, 1 or -1 (unknown /
no face -> null). Images: `{frames_dir or root/cropped_aligned}/{video}/{i:05d}.jpg`.
The split becomes the `fold` column: Validation_Set is the test fold (1), Train_Set is never
tested (0); use `folds: column`. Subject = video name without a trailing `_left` / `_right`
(two-person videos are annotated once per face).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import pandas as pd
from tqdm import tqdm

from pipeline.config import DatasetConfig
from pipeline.datasets.bp4d import NOTE_UNCODED, index_frames
from pipeline.manifest import ManifestError, ManifestReport

TRAIN_FOLD, TEST_FOLD = 0, 1
SPLITS = (("Train_Set", TRAIN_FOLD), ("Validation_Set", TEST_FOLD))
CROPS_DIR = "cropped_aligned"
ALPHABET = {"-1": None, "0": 0, "1": 1}
_AU = re.compile(r"^AU(\d+)$")
_SIDE = re.compile(r"_(left|right)$")
NOTE_NO_FACE = "frames labelled -1 throughout with no image (no face; left out)"


def subject_of(video: str) -> str:
    return _SIDE.sub("", video)


def _header(path: Path, line: str, report: ManifestReport, n_rows: int) -> Optional[list[int]]:
    names = [h.strip() for h in line.split(",")]
    numbers = [_AU.match(h) for h in names]
    if not all(numbers):
        report.bad("bad_header", f"{path}:1", f"expected a header like AU1,AU2,AU4,..., got "
                   f"{line.strip()[:60]!r}", n=max(n_rows, 1))
        return None
    return [int(m[1]) for m in numbers]


def _read_video(path: Path, fold: int, cfg: DatasetConfig, report: ManifestReport,
                crops: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        report.bad("unreadable_label_file", str(path), f"cannot read the label file: {e}")
        return []
    while lines and not lines[-1].strip():  # trailing blank lines only; inner ones are frames
        lines.pop()
    if not lines:
        report.bad("empty_label_file", str(path), "the label file is empty (no header)")
        return []
    numbers = _header(path, lines[0], report, len(lines) - 1)
    if numbers is None:
        return []
    for n in cfg.au_set.numbers:
        if n not in numbers:
            report.note(f"AU{n:02d} not in the Aff-Wild2 header of {path.name} (left unknown)")
    keep = {f"AU{n:02d}": numbers.index(n) for n in cfg.au_set.numbers if n in numbers}
    video = path.stem
    folder = crops / video
    images, ambiguous = index_frames(folder, cfg.image_ext) if folder.is_dir() else ({}, {})
    if not folder.is_dir():
        report.note("label files whose image folder is missing", 1)
    out, used, no_face = [], 0, 0
    for frame, line in enumerate(lines[1:], 1):  # line frame+1 holds frame `frame`
        where = f"{path}:{frame + 1}"
        fields = [v.strip() for v in line.split(",")]
        if len(fields) != len(numbers):
            report.bad("wrong_column_count", where, f"{len(fields)} values, the header has {len(numbers)}")
            continue
        odd = [v for v in fields if v not in ALPHABET]
        if odd:
            report.bad("label_out_of_alphabet", where, f"value {odd[0]!r}; Aff-Wild2 labels are "
                       "0, 1 or -1 (unknown)")
            continue
        if frame in ambiguous:
            report.bad("ambiguous_image", where, f"frame {frame} has several images in {folder}")
            continue
        if frame not in images:
            if all(v == "-1" for v in fields):
                no_face += 1  # the release has no crop where no face was found
            else:
                report.bad("no_image", where, f"no image {frame:05d}.{cfg.image_ext} in {folder}")
            continue
        rec = {"subject": subject_of(video), "session": video, "video_id": video, "frame": frame,
               "image_path": str(images[frame]), "fold": fold}
        rec.update({col: ALPHABET[fields[i]] for col, i in keep.items()})
        out.append(rec)
        used += 1
    if no_face:
        report.note(NOTE_NO_FACE, no_face)
    if len(images) > used:
        report.note(NOTE_UNCODED, len(images) - used)
    return out


def read(cfg: DatasetConfig, report: ManifestReport) -> pd.DataFrame:
    crops = cfg.frames_dir or cfg.root / CROPS_DIR
    files: list[tuple[Path, int]] = []
    for split, fold in SPLITS:
        d = cfg.root / split
        if d.is_dir():
            files += [(p, fold) for p in sorted(d.glob("*.txt"))]
        else:
            report.note(f"{split}/ not found under {cfg.root}")
    if not files:
        raise ManifestError(f"dataset '{cfg.name}': no Aff-Wild2 label files under {cfg.root} "
                            "(expected Train_Set/{video}.txt and Validation_Set/{video}.txt): "
                            "empty dataset")
    split_of: dict[str, Path] = {}
    rows: list[dict] = []
    for path, fold in tqdm(files, desc="Aff-Wild2 label files", unit="file", disable=None):
        if path.stem in split_of:  # the same video in both splits would leak test frames
            with open(path, "rb") as fh:
                n = max(sum(1 for _ in fh) - 1, 1)
            report.bad("video_in_both_splits", str(path), f"video {path.stem} is also labelled "
                       f"in {split_of[path.stem]}; this copy is left out", n=n)
            continue
        split_of[path.stem] = path
        rows += _read_video(path, fold, cfg, report, crops)
    df = pd.DataFrame(rows)
    if not df.empty:
        mixed = df.groupby("subject")["fold"].nunique()
        if (mixed > 1).any():
            report.note("subjects with videos in both Train_Set and Validation_Set", int((mixed > 1).sum()))
    return df
