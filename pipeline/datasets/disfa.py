"""DISFA, left camera.

Labels: `{root}/ActionUnit_Labels/{SN}/{SN}_au{N}.txt`, one file per AU, each line
`frameIndex,intensity` (1-based frame index, intensity 0-5). Occurrence = intensity >=
`dataset.occurrence_threshold`; the intensity is kept as `AUxx_intensity`. The manifest's `frame`
is 0-based (frameIndex - 1), as in the community's label tables.
Media (`dataset.disfa_source`): "video" = `{root}/Videos_LeftCamera/LeftVideo{SN}_comp.avi`
decoded at `video_frame = frame`; "frames" = `{frames_dir or root}/{SN}/{frame}.png` (0-based;
`dataset.image_ext` when set explicitly).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd
from tqdm import tqdm

from pipeline.config import DatasetConfig
from pipeline.errors import MissingInput
from pipeline.datasets.bp4d import NOTE_UNCODED, index_frames
from pipeline.manifest import ManifestError, ManifestReport
from pipeline.video import frame_count

LABEL_DIR = "ActionUnit_Labels"
VIDEO_DIR = "Videos_LeftCamera"
MAX_INTENSITY = 5
DEFAULT_FRAME_EXT = "png"  # pre-extracted DISFA frames are PNGs by convention


@dataclass
class AUFile:
    """One parsed `{SN}_au{N}.txt`: intensity and line of each 1-based frame index."""

    path: Path
    values: dict[int, int] = field(default_factory=dict)
    lines: dict[int, int] = field(default_factory=dict)
    bad: set[int] = field(default_factory=set)  # frames already reported (left out)
    n_lines: int = 0


def _int(text: str) -> Optional[int]:
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else None


def _parse(path: Path, report: ManifestReport) -> Optional[AUFile]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        report.bad("unreadable_label_file", str(path), f"cannot read the label file: {e}")
        return None
    out = AUFile(path)
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        out.n_lines += 1
        where = f"{path}:{line_no}"
        parts = line.split(",")
        frame = _int(parts[0]) if len(parts) == 2 else None
        if frame is None or frame < 1:
            report.bad("bad_line", where, f"expected 'frameIndex,intensity' with a 1-based frame "
                       f"index, got {line.strip()!r}")
            out.bad.add(line_no)  # DISFA writes frame i on line i
            continue
        value = _int(parts[1])
        if value is None or not 0 <= value <= MAX_INTENSITY:
            report.bad("label_out_of_alphabet", where, f"intensity {parts[1].strip()!r}; DISFA "
                       f"intensities are integers 0-{MAX_INTENSITY}")
            out.bad.add(frame)
        elif frame in out.values or frame in out.bad:
            report.bad("duplicate_frame", where, f"frame {frame} is listed twice in {path.name}")
            out.bad.add(frame)
        else:
            out.values[frame] = value
            out.lines[frame] = line_no
    for f in out.bad:
        out.values.pop(f, None)
    return out


def _common_frames(sn: str, files: list[AUFile], report: ManifestReport) -> set[int]:
    """Frames every AU file has (minus already-reported ones); the rest is a length mismatch."""
    bad = set().union(*(f.bad for f in files))
    common = set.intersection(*(set(f.values) for f in files)) - bad
    extra = set().union(*(set(f.values) for f in files)) - common - bad
    if extra:
        first = min(extra)
        has = next(f for f in files if first in f.values)
        lacks = next(f for f in files if first not in f.values)
        report.bad("frame_count_mismatch", f"{has.path}:{has.lines[first]}",
                   f"frame {first} is in {has.path.name} ({has.n_lines} lines) but not in "
                   f"{lacks.path.name} ({lacks.n_lines} lines); {len(extra)} frames of {sn} are "
                   "not in every AU file", n=len(extra))
    return common


def _media(cfg: DatasetConfig, sn: str, frames: list[int], first: AUFile,
           report: ManifestReport) -> dict[int, dict]:
    """{1-based frame index: media columns} for the frames that have an image / video frame."""
    where0 = f"{first.path}:{first.lines[frames[0]]}"
    if cfg.disfa_source == "video":
        video = cfg.root / VIDEO_DIR / f"LeftVideo{sn}_comp.avi"
        if not video.exists():
            report.bad("no_video", where0, f"video not found: {video} ({len(frames)} labelled "
                       "frames)", n=len(frames))
            return {}
        n = frame_count(video)
        if n == 0:
            report.bad("unreadable_video", where0, f"cannot decode {video}", n=len(frames))
            return {}
        past = [f for f in frames if f - 1 >= n]
        if past:
            report.bad("no_image", f"{first.path}:{first.lines[past[0]]}", f"{len(past)} labelled "
                       f"frames past the end of {video} ({n} frames)", n=len(past))
        if n > len(frames) - len(past):
            report.note(NOTE_UNCODED, n - (len(frames) - len(past)))
        return {f: {"video_path": str(video), "video_frame": f - 1} for f in frames if f - 1 < n}
    ext = cfg.image_ext if "image_ext" in cfg.model_fields_set else DEFAULT_FRAME_EXT
    folder = (cfg.frames_dir or cfg.root) / sn
    if not folder.is_dir():
        report.bad("no_image", where0, f"frame folder not found: {folder} ({len(frames)} "
                   "labelled frames)", n=len(frames))
        return {}
    images, ambiguous = index_frames(folder, ext)
    out = {}
    for f in frames:
        where = f"{first.path}:{first.lines[f]}"
        if f - 1 in ambiguous:
            report.bad("ambiguous_image", where, f"frame {f - 1} has several images in {folder}")
        elif f - 1 not in images:
            report.bad("no_image", where, f"no image for frame {f - 1} in {folder}")
        else:
            out[f] = {"image_path": str(images[f - 1])}
    if len(images) > len(out):
        report.note(NOTE_UNCODED, len(images) - len(out))
    return out


def _subject(cfg: DatasetConfig, sn: str, label_dir: Path, report: ManifestReport) -> list[dict]:
    paths = {n: label_dir / sn / f"{sn}_au{n}.txt" for n in cfg.au_set.numbers}
    missing = [p for p in paths.values() if not p.exists()]
    parsed = {n: _parse(p, report) for n, p in paths.items() if p.exists()}
    if missing:
        size = max((f.n_lines for f in parsed.values() if f), default=1)
        report.bad("missing_label_file", str(missing[0]), f"no label file for this AU of {sn} "
                   f"({len(missing)} missing: {', '.join(p.name for p in missing)}); the "
                   f"subject's {size} frames are left out", n=size)
        return []
    if any(f is None for f in parsed.values()):
        return []
    files = list(parsed.values())
    frames = sorted(_common_frames(sn, files, report))
    if not frames:
        return []
    media = _media(cfg, sn, frames, files[0], report)
    rows = []
    for f in frames:
        if f not in media:
            continue
        rec = {"subject": sn, "session": "", "video_id": sn, "frame": f - 1, **media[f]}
        for n, au in parsed.items():
            v = au.values[f]
            rec[f"AU{n:02d}"] = int(v >= cfg.occurrence_threshold)
            rec[f"AU{n:02d}_intensity"] = v
        rows.append(rec)
    return rows


def read(cfg: DatasetConfig, report: ManifestReport) -> pd.DataFrame:
    label_dir = cfg.root / LABEL_DIR
    if not label_dir.is_dir():
        raise MissingInput(f"dataset '{cfg.name}': DISFA label folder not found: {label_dir} "
                                "(expected ActionUnit_Labels/{SN}/{SN}_au{N}.txt under dataset.root)")
    subjects = sorted(p.name for p in label_dir.iterdir() if p.is_dir())
    if not subjects:
        raise ManifestError(f"{label_dir}: no subject folders ({{SN}}/): empty dataset")
    rows: list[dict] = []
    for sn in tqdm(subjects, desc="DISFA subjects", unit="subject", disable=None):
        rows += _subject(cfg, sn, label_dir, report)
    return pd.DataFrame(rows)
