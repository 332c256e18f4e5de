"""BP4D-Spontaneous, release layout.

Labels: `{root}/AUCoding/AU_OCC/{subject}_{task}.csv` (e.g. `F001_T1.csv`). The header row names
the columns: the first is the frame number (header `0`), the others AU numbers `1` ... `99`. One
row per coded frame; values 0, 1 or 9 (unknown -> null). Only a stretch of each task is coded.
Images: `{frames_dir or root}/{subject}/{task}/{frame}.jpg`, with or without zero padding.

`index_frames` (folder -> {int(stem): file}) lives here and is shared by the DISFA and Aff-Wild2
readers: keeping it in a reader module keeps it inside the manifest stage's code fingerprint.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Optional

import pandas as pd
from tqdm import tqdm

from pipeline.config import DatasetConfig
from pipeline.errors import MissingInput
from pipeline.manifest import ManifestError, ManifestReport

LABEL_DIR = ("AUCoding", "AU_OCC")
FRAME_HEADER = "0"  # header of the frame-number column
ALPHABET = {"0": 0, "1": 1, "9": None}  # 9 = unknown, never a positive
_FILE_NAME = re.compile(r"^(?P<subject>[^_]+)_(?P<task>[^_]+)$")
NOTE_UNCODED = "images without labels (only a stretch of each task is coded; normal)"


def index_frames(folder: Path, ext: str) -> tuple[dict[int, Path], dict[int, list[Path]]]:
    """List `folder` once: {frame: image} for `<integer>.<ext>` files, and the ambiguous frames.

    `12.jpg` and `0012.jpg` are the same frame: such a frame is returned in the second dict
    (with every file) and left out of the first, so no label is silently paired with either.
    """
    found: dict[int, list[Path]] = {}
    suffix = "." + ext.lower().lstrip(".")
    for p in folder.iterdir():
        if p.suffix.lower() == suffix and p.stem.isdigit():
            found.setdefault(int(p.stem), []).append(p)
    single = {k: v[0] for k, v in found.items() if len(v) == 1}
    ambiguous = {k: sorted(v) for k, v in found.items() if len(v) > 1}
    return single, ambiguous


def _read_rows(path: Path, report: ManifestReport) -> Optional[list[tuple[int, list[str]]]]:
    """(line number, fields) of every non-empty row, header included; None if unreadable."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            return [(reader.line_num, row) for row in reader if any(f.strip() for f in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        report.bad("unreadable_label_file", str(path), f"cannot read the label file: {e}")
        return None


def _au_columns(path: Path, header: list[str], numbers: tuple[int, ...],
                report: ManifestReport, n_rows: int) -> Optional[dict[str, int]]:
    """{AU column: field index} for the AU set's AUs the header has; None if the header is bad."""
    names = [h.strip() for h in header]
    if names[0] != FRAME_HEADER or not all(h.isdigit() for h in names[1:]):
        report.bad("bad_header", f"{path}:1", "expected a header of integers whose first column "
                   f"is '{FRAME_HEADER}' (the frame number), got {','.join(names[:6])}...",
                   n=n_rows)
        return None
    index = {int(h): i for i, h in enumerate(names) if i > 0}
    for n in numbers:
        if n not in index:
            report.note(f"AU{n:02d} not in {path.name} (left unknown)")
    return {f"AU{n:02d}": index[n] for n in numbers if n in index}


def _read_file(path: Path, subject: str, task: str, cfg: DatasetConfig, report: ManifestReport,
               frames_dir: Path) -> list[dict]:
    """The rows of one {subject}_{task}.csv whose labels and image are usable; every other line
    is reported by reason (the file and line named)."""
    table = _labelled_lines(path, cfg, report)
    if table is None:
        return []
    header, cols, data = table
    folder = frames_dir / subject / task
    if not folder.is_dir():
        report.bad("no_image", f"{path}:{data[0][0]}", f"image folder not found: {folder} "
                   f"({len(data)} labelled frames)", n=len(data))
        return []
    images, ambiguous = index_frames(folder, cfg.image_ext)
    out, first_line = [], {}  # first_line: frame -> line it was first listed on
    for line, fields in data:
        rec = _parse_line(f"{path}:{line}", fields, header, cols, first_line, report)
        if rec is None:
            continue
        frame = rec["frame"]
        first_line[frame] = line
        if frame in ambiguous:
            names = ", ".join(p.name for p in ambiguous[frame])
            report.bad("ambiguous_image", f"{path}:{line}", f"frame {frame} has several images in {folder}: {names}")
            continue
        if frame not in images:
            report.bad("no_image", f"{path}:{line}", f"no image for frame {frame} in {folder}")
            continue
        out.append({"subject": subject, "session": task, "video_id": f"{subject}/{task}", **rec,
                    "image_path": str(images[frame])})
    if len(images) > len(out):
        report.note(NOTE_UNCODED, len(images) - len(out))
    return out


def _labelled_lines(path: Path, cfg: DatasetConfig, report: ManifestReport):
    """(header, AU column -> field index, [(line, fields)]) of a label file, None (reported)
    when it is unreadable, empty or lacks the AU set's columns."""
    rows = _read_rows(path, report)
    if rows is None:
        return None
    if not rows:
        report.bad("empty_label_file", str(path), "the label file has no rows")
        return None
    (_, header), data = rows[0], rows[1:]
    cols = _au_columns(path, header, cfg.au_set.numbers, report, len(data))
    if cols is None:
        return None
    if not data:  # a header and no rows: a whole subject-task would vanish without a word
        report.bad("empty_label_file", str(path), "the label file has a header but no rows")
        return None
    return header, cols, data


def _parse_line(where: str, fields: list[str], header: list[str], cols: dict[str, int],
                first_line: dict[int, int], report: ManifestReport) -> dict | None:
    """{frame, AUxx...} of one label line; None (reported at `where`) when it is unusable."""
    if len(fields) != len(header):
        report.bad("wrong_column_count", where, f"{len(fields)} fields, the header has {len(header)}")
        return None
    frame_text = fields[0].strip()
    if not frame_text.isdigit():
        report.bad("bad_frame_number", where, f"frame number {frame_text!r} is not an integer")
        return None
    frame = int(frame_text)
    if frame in first_line:
        report.bad("duplicate_frame", where, f"frame {frame} is listed again (first at line "
                   f"{first_line[frame]}); the first is kept")
        return None
    rec: dict = {"frame": frame}
    for col, i in cols.items():
        v = fields[i].strip()
        if v not in ALPHABET:
            report.bad("label_out_of_alphabet", where, f"{col} = {v!r}; BP4D labels are 0, 1 "
                       "or 9 (unknown)")
            return None
        rec[col] = ALPHABET[v]
    return rec


def read(cfg: DatasetConfig, report: ManifestReport) -> pd.DataFrame:
    label_dir = cfg.root.joinpath(*LABEL_DIR)
    if not label_dir.is_dir():
        raise MissingInput(f"dataset '{cfg.name}': BP4D label folder not found: {label_dir} "
                                "(expected AUCoding/AU_OCC/{subject}_{task}.csv under dataset.root)")
    files = sorted(label_dir.glob("*.csv"))
    if not files:
        raise ManifestError(f"{label_dir}: no label files ({{subject}}_{{task}}.csv): empty dataset")
    frames_dir = cfg.frames_dir or cfg.root
    rows: list[dict] = []
    labelled: dict[str, set[str]] = {}
    for path in tqdm(files, desc="BP4D label files", unit="file", disable=None):
        m = _FILE_NAME.match(path.stem)
        if m is None:
            report.bad("bad_file_name", str(path), "expected {subject}_{task}.csv, e.g. F001_T1.csv")
            continue
        subject, task = m["subject"], m["task"]
        labelled.setdefault(subject, set()).add(task)
        rows += _read_file(path, subject, task, cfg, report, frames_dir)
    # Task folders of labelled subjects with no label file at all: informational.
    for subject, tasks in labelled.items():
        sdir = frames_dir / subject
        if sdir.is_dir():
            extra = [p for p in sdir.iterdir() if p.is_dir() and p.name not in tasks]
            if extra:
                report.note("image folders without a label file", len(extra))
    return pd.DataFrame(rows)
