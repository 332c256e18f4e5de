"""A user's own data: a CSV or Parquet table of images or videos, labels optional.

Columns: `subject` (required); `image_path`, or `video_path` with an optional `video_frame`
(0-based; a video row without it stands for every frame of the video); optional `session`,
`video_id`, `frame`, `fold`, `box_x0..box_y1`, `landmarks` (list, or "x0 y0 x1 y1 ..." text in a
CSV), and AU columns named like `AU01` (0/1, empty = unknown). Relative paths are relative to the
table's folder. Line numbers in messages are the CSV's (header = line 1).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import DatasetConfig
from pipeline.manifest import BOX_COLUMNS, ManifestReport
from pipeline.video import frame_count

OPTIONAL = ["session", "video_id", "frame", "video_frame", "fold", "landmarks", *BOX_COLUMNS]


def _load(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"manifest file not found: {path}")
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype={"subject": str, "session": str, "video_id": str},
                           keep_default_na=True)
    except Exception as e:  # pyarrow / pandas parser errors carry the detail
        raise ValueError(f"{path}: unreadable table: {e}") from None


def _parse_landmarks(value, where: str, report: ManifestReport):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    pts = (np.asarray(value, dtype=np.float32) if not isinstance(value, str)
           else np.array(value.replace(",", " ").split(), dtype=np.float32))
    if pts.size not in (10, 136):
        report.bad("bad_landmarks", where, f"landmarks need 5 or 68 (x, y) points, got {pts.size} values")
        return "drop"
    return pts.tolist()


def read(cfg: DatasetConfig, report: ManifestReport) -> pd.DataFrame:
    path = cfg.manifest_file or (cfg.root / "manifest.csv")
    df = _load(path)
    base = path.parent
    if "subject" not in df:
        raise ValueError(f"{path}: required column 'subject' is missing (columns: {list(df.columns)})")
    if "image_path" not in df and "video_path" not in df:
        raise ValueError(f"{path}: needs an 'image_path' or a 'video_path' column")
    au_cols = [c for c in cfg.au_set.columns if c in df]
    keep_cols = ["subject", "image_path", "video_path", *[c for c in OPTIONAL if c in df], *au_cols]
    rows: list[dict] = []
    for i, rec in enumerate(df[[c for c in keep_cols if c in df]].to_dict("records")):
        where = f"{path}:{i + 2}"
        out = {k: v for k, v in rec.items() if not (isinstance(v, float) and np.isnan(v))}
        out["subject"] = str(rec["subject"])
        bad = False
        for c in au_cols:
            v = rec.get(c)
            if v is None or (isinstance(v, float) and np.isnan(v)):
                out[c] = None
            elif v in (0, 1):
                out[c] = int(v)
            else:
                report.bad("label_out_of_alphabet", where, f"{c} = {v!r}; labels are 0, 1 or empty")
                bad = True
        if "landmarks" in rec:
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
            if "video_frame" in out:
                out["video_frame"] = int(out["video_frame"])
                out.setdefault("frame", out["video_frame"])
                rows.append(out)
            else:  # one row per decoded frame of the video
                n = frame_count(p)
                if n == 0:
                    report.bad("empty_video", where, f"video has no frames: {p}")
                    continue
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
