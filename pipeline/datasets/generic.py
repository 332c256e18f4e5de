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


def read(cfg: DatasetConfig, report: ManifestReport) -> pd.DataFrame:
    path = cfg.manifest_file or (cfg.root / "manifest.csv")
    df = _load(path)
    base = path.parent
    if "subject" not in df:
        raise ManifestError(f"{path}: required column 'subject' is missing (columns: "
                            f"{list(df.columns)})")
    if "image_path" not in df and "video_path" not in df:
        raise ManifestError(f"{path}: needs an 'image_path' or a 'video_path' column")
    n_frames: dict[Path, int] = {}  # frames per video, counted once
    au_cols = au_columns(path, list(df.columns), cfg, report)
    keep_cols = ["subject", "image_path", "video_path", *[c for c in OPTIONAL if c in df], *au_cols]
    rows: list[dict] = []
    for i, rec in enumerate(df[[c for c in keep_cols if c in df]].to_dict("records")):
        where = f"{path}:{i + 2}"
        out = {k: v for k, v in rec.items() if not _blank(v)}
        out["subject"] = str(rec["subject"]).strip()
        bad = False
        for c in au_cols:
            try:
                out[c] = _label(rec.get(c))
            except KeyError as e:
                report.bad("label_out_of_alphabet", where, f"{c} = {e.args[0]!r}; labels are 0, "
                           "1 or empty (unknown)")
                bad = True
                break
        for c in ("fold", "frame", "video_frame"):
            if c in out and not bad:
                try:
                    out[c] = _int(out[c])
                    if out[c] < 0:
                        raise ValueError(out[c])
                except (TypeError, ValueError, OverflowError):
                    report.bad(f"bad_{c}", where, f"column {c} = {rec[c]!r}; expected an integer "
                               ">= 0")
                    bad = True
                    break
        if not bad and "fold" in out and cfg.folds is FoldScheme.COLUMN and out["fold"] > cfg.n_folds:
            report.bad("bad_fold", where, f"column fold = {rec['fold']!r}; with folds: column and "
                       f"dataset.n_folds {cfg.n_folds} a fold is 0 (never a test frame) .. "
                       f"{cfg.n_folds}; fix the value or set dataset.n_folds")
            bad = True
        for c in BOX_COLUMNS:
            if c in out and not bad:
                try:
                    out[c] = float(str(out[c]).strip())
                    if not np.isfinite(out[c]):
                        raise ValueError(out[c])
                except (TypeError, ValueError):
                    report.bad("bad_box", where, f"column {c} = {rec[c]!r}; expected a number "
                               "(pixels)")
                    bad = True
        if "landmarks" in rec and not bad:
            lm = _parse_landmarks(rec["landmarks"], where, report)
            bad |= lm == "drop"
            out["landmarks"] = None if lm == "drop" else lm
        if bad:
            continue
        img, vid = out.get("image_path"), out.get("video_path")
        if img:
            p = Path(img) if Path(img).is_absolute() else base / img
            if not p.exists():
                report.bad("no_image", where, f"image not found: {p}")
                continue
            out["image_path"] = str(p)
            out.setdefault("frame", i)
            out.setdefault("session", "")
            rows.append(out)
        elif vid:
            p = Path(vid) if Path(vid).is_absolute() else base / vid
            if not p.exists():
                report.bad("no_video", where, f"video not found: {p}")
                continue
            out["video_path"] = str(p)
            out.setdefault("session", p.stem)
            n = n_frames[p] = n_frames[p] if p in n_frames else frame_count(p)
            if n == 0:
                report.bad("empty_video", where, f"video has no frames (or is not a video): {p}")
                continue
            if "video_frame" in out:
                if out["video_frame"] >= n:
                    report.bad("frame_out_of_range", where, f"video_frame {out['video_frame']} is "
                               f"past the end of {p} ({n} frames: 0..{n - 1})")
                    continue
                out.setdefault("frame", out["video_frame"])
                rows.append(out)
            else:  # one row per decoded frame of the video
                for f in range(n):
                    rows.append({**out, "video_frame": f, "frame": f})
        else:
            report.bad("no_media", where, "row has neither image_path nor video_path")
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["frame"] = frame["frame"].astype(np.int64)
        if "video_id" not in frame:
            frame["video_id"] = frame["subject"] + "/" + frame["session"].astype(str)
    return frame
