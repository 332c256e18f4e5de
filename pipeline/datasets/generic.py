"""A user's own data: a CSV or Parquet table of images or videos, labels optional.

Columns: `subject` (required); `image_path`, or `video_path` with an optional `video_frame`
(0-based; a video row without it stands for every frame of the video); optional `session`,
`video_id`, `frame`, `fold`, `box_x0..box_y1`, `landmarks` (list, or "x0 y0 x1 y1 ..." text in a
CSV), and AU columns named like `AU01` (0/1, empty = unknown). Relative paths are relative to the
table's folder. Line numbers in messages are the CSV's (header = line 1).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.aus import au_column
from pipeline.config import DatasetConfig, FoldScheme
from pipeline.errors import MissingInput
from pipeline.manifest import BOX_COLUMNS, ManifestError, ManifestReport
from pipeline.video import frame_count

OPTIONAL = ["session", "video_id", "frame", "video_frame", "fold", "landmarks", *BOX_COLUMNS]
# A column that looks like an AU label: AU01, au1, AU_2, au 12 ... (canonical spelling: AU01)
_AU_LIKE = re.compile(r"^\s*au[\s_]*0*(\d{1,2})\s*$", re.IGNORECASE)
_TRUE, _FALSE = {"1", "1.0"}, {"0", "0.0"}
_UNKNOWN = {"", "na", "nan", "null", "none"}  # spellings of an empty (unknown) cell


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or \
        (isinstance(v, str) and v.strip().lower() in _UNKNOWN)


def _label(v):
    """0 / 1 / None (unknown) from a cell, whatever pandas made of the column; KeyError if not."""
    if _blank(v):
        return None
    text = str(v).strip()
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    raise KeyError(text)


def _int(v) -> int:
    """An integer from a cell (12, 12.0, '12'); ValueError otherwise."""
    f = float(str(v).strip())
    if not f.is_integer():
        raise ValueError(v)
    return int(f)


def au_columns(path: Path, columns: list[str], cfg: DatasetConfig,
               report: ManifestReport) -> list[str]:
    """The AU set's columns present; a label-like column not spelled like the registry (au01,
    AU2, AU_12) is refused, naming the spelling to use, so no label column is ever ignored."""
    wanted = set(cfg.au_set.columns)
    misspelt = []
    for c in columns:
        m = _AU_LIKE.match(str(c))
        if m is None:
            continue
        canon = au_column(int(m.group(1)))
        if c != canon:
            misspelt.append(f"'{c}' (write '{canon}')")
        elif c not in wanted:
            report.note(f"column {c} is not in the AU set '{cfg.au_set.value}' (ignored)")
    if misspelt:
        raise ManifestError(f"{path}: AU label columns are spelled AU01, AU02, ...; rename "
                            f"{', '.join(misspelt)}")
    return [c for c in cfg.au_set.columns if c in columns]


def _load(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise MissingInput(f"manifest file not found: {path}")
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        # every cell as text: a stray value in one row never changes how a column is read
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # pyarrow / pandas parser errors carry the detail
        raise ManifestError(f"{path}: unreadable table: {e}") from None


def _parse_landmarks(value, where: str, report: ManifestReport):
    if not isinstance(value, (list, np.ndarray)) and _blank(value):
        return None
    try:
        pts = (np.asarray(value, dtype=np.float32) if not isinstance(value, str)
               else np.array(value.replace(",", " ").split(), dtype=np.float32))
    except (TypeError, ValueError):
        shown = value if isinstance(value, str) else type(value).__name__
        report.bad("bad_landmarks", where, f"column landmarks = {str(shown)[:40]!r}; expected "
                   "numbers 'x0 y0 x1 y1 ...' (5 or 68 points)")
        return "drop"
    if not np.isfinite(pts).all():
        report.bad("bad_landmarks", where, "column landmarks holds a non-finite number")
        return "drop"
    if pts.size not in (10, 136):
        report.bad("bad_landmarks", where, f"landmarks need 5 or 68 (x, y) points, got {pts.size} values")
        return "drop"
    return pts.tolist()


def _cells(rec: dict, where: str, cfg: DatasetConfig, au_cols: list[str],
           report: ManifestReport) -> dict | None:
    """One row's cells parsed (labels, integers, box, landmarks); None when a cell is bad (the
    report names it)."""
    out = {k: v for k, v in rec.items() if not _blank(v)}
    out["subject"] = str(rec["subject"]).strip()
    for c in au_cols:
        try:
            out[c] = _label(rec.get(c))
        except KeyError as e:
            report.bad("label_out_of_alphabet", where, f"{c} = {e.args[0]!r}; labels are 0, "
                       "1 or empty (unknown)")
            return None
    for c in ("fold", "frame", "video_frame"):
        if c in out:
            try:
                out[c] = _int(out[c])
                if out[c] < 0:
                    raise ValueError(out[c])
            except (TypeError, ValueError, OverflowError):
                report.bad(f"bad_{c}", where, f"column {c} = {rec[c]!r}; expected an integer >= 0")
                return None
    if "fold" in out and cfg.folds is FoldScheme.COLUMN and out["fold"] > cfg.n_folds:
        report.bad("bad_fold", where, f"column fold = {rec['fold']!r}; with folds: column and "
                   f"dataset.n_folds {cfg.n_folds} a fold is 0 (never a test frame) .. "
                   f"{cfg.n_folds}; fix the value or set dataset.n_folds")
        return None
    bad = False
    for c in BOX_COLUMNS:  # every bad box cell is named, then the row is dropped
        if c in out:
            try:
                out[c] = float(str(out[c]).strip())
                if not np.isfinite(out[c]):
                    raise ValueError(out[c])
            except (TypeError, ValueError):
                report.bad("bad_box", where, f"column {c} = {rec[c]!r}; expected a number (pixels)")
                bad = True
    if bad:
        return None
    if "landmarks" in rec:
        lm = _parse_landmarks(rec["landmarks"], where, report)
        if lm == "drop":
            return None
        out["landmarks"] = lm
    return out


def _media_rows(out: dict, line: int, base: Path, where: str, n_frames: dict[Path, int],
                report: ManifestReport) -> list[dict]:
    """The manifest rows of one table row: its image, its video frame, or every frame of its
    video; [] when the media is missing or out of range (the report names it)."""
    img, vid = out.get("image_path"), out.get("video_path")
    if not img and not vid:
        report.bad("no_media", where, "row has neither image_path nor video_path")
        return []
    p = Path(img or vid)
    p = p if p.is_absolute() else base / p
    if img:
        if not p.exists():
            report.bad("no_image", where, f"image not found: {p}")
            return []
        out["image_path"] = str(p)
        out.setdefault("frame", line)
        out.setdefault("session", "")
        return [out]
    if not p.exists():
        report.bad("no_video", where, f"video not found: {p}")
        return []
    out["video_path"] = str(p)
    out.setdefault("session", p.stem)
    n = n_frames[p] = n_frames[p] if p in n_frames else frame_count(p)  # counted once a video
    if n == 0:
        report.bad("empty_video", where, f"video has no frames (or is not a video): {p}")
        return []
    if "video_frame" not in out:  # one row per decoded frame of the video
        return [{**out, "video_frame": f, "frame": f} for f in range(n)]
    if out["video_frame"] >= n:
        report.bad("frame_out_of_range", where, f"video_frame {out['video_frame']} is past the "
                   f"end of {p} ({n} frames: 0..{n - 1})")
        return []
    out.setdefault("frame", out["video_frame"])
    return [out]


def read(cfg: DatasetConfig, report: ManifestReport) -> pd.DataFrame:
    path = cfg.manifest_file or (cfg.root / "manifest.csv")
    df = _load(path)
    if "subject" not in df:
        raise ManifestError(f"{path}: required column 'subject' is missing (columns: "
                            f"{list(df.columns)})")
    if "image_path" not in df and "video_path" not in df:
        raise ManifestError(f"{path}: needs an 'image_path' or a 'video_path' column")
    au_cols = au_columns(path, list(df.columns), cfg, report)
    keep_cols = ["subject", "image_path", "video_path", *[c for c in OPTIONAL if c in df], *au_cols]
    n_frames: dict[Path, int] = {}
    rows: list[dict] = []
    for i, rec in enumerate(df[[c for c in keep_cols if c in df]].to_dict("records")):
        where = f"{path}:{i + 2}"
        out = _cells(rec, where, cfg, au_cols, report)
        if out is not None:
            rows += _media_rows(out, i, path.parent, where, n_frames, report)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["frame"] = frame["frame"].astype(np.int64)
        if "video_id" not in frame:
            frame["video_id"] = frame["subject"] + "/" + frame["session"].astype(str)
    return frame
