"""What `aunet predict` writes: OpenFace-style tables, timelines, aligned crops, annotated video.

Tables (docs/predict.md, "Output columns"): video layout `frame, face_id, timestamp, confidence,
success`, image layout `file, face, confidence, success`; then OpenFace's head pose
`pose_Tx .. pose_Rz` and 68 landmarks `x_0 .. x_67, y_0 .. y_67`, the face box, the 5 keypoints,
`AUxx_c` (0/1 at the bundle's threshold) and `AUxx_p` (probability) for the bundle's AUs, and
`reason` (why a row has `success = 0`: no face, or the frame could not be decoded; empty where a
face was found). A frame without a face has a row with `success = 0` and empty AU cells (never 0).
CSV uses OpenFace's `, ` separator and fixed decimals (timestamps 3, pixel coordinates 1, every
other number 4), never scientific notation. Every file is written atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
import pandas as pd

from pipeline.predict.predictor import Row
from pipeline.video import write_video
from store.provenance import RANDOM_WEIGHTS_BANNER, atomic_path

BOX_COLUMNS = ["bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]
KP_COLUMNS = [f"kp_x_{i}" for i in range(5)] + [f"kp_y_{i}" for i in range(5)]
POSE_COLUMNS = ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]  # mm, rad
LANDMARK_COLUMNS = [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]  # source px
CSV_SEP = ", "
UNTRAINED_COLUMN = "untrained_backbone"  # 1 on every row of a random-weight bundle's output
REASON_COLUMN = "reason"  # why success = 0 (pipeline.predict.predictor.NO_FACE or a decode error)
# Decimals written in CSV (exact at any magnitude, unlike %g's significant digits: 1000.333 s
# and 1000.667 s are both "1001" in %.4g). Pixel coordinates (any column starting with one of
# these prefixes) to 0.1 px, timestamps to the millisecond, every other float to 4 decimals.
TIMESTAMP_DECIMALS, PIXEL_DECIMALS, OTHER_DECIMALS = 3, 1, 4
PIXEL_PREFIXES = ("bbox_", "kp_", "x_", "y_")


def table(rows: Iterable[Row], aus: list[str], thresholds: dict[str, float], *, fps: float | None,
          files: list[str] | None = None, random_weights: bool = False,
          times: dict[int, float] | None = None) -> pd.DataFrame:
    """The output table. fps: video layout with timestamps (each frame's presentation time from
    `times` where given, else index / fps); files: image layout (one per row)."""
    recs = []
    for i, r in enumerate(rows):
        rec = {} if files is None else {"file": files[i]}
        if files is None:
            rec |= {"frame": r.frame + 1, "face_id": r.face_id,
                    "timestamp": round(times[r.frame] if times else r.frame / fps, 3)
                    if fps else float("nan")}
        else:
            rec["face"] = r.face_id
        rec |= {"confidence": r.score if r.success else 0.0, "success": int(r.success)}
        rec[REASON_COLUMN] = r.reason
        rec |= dict(zip(POSE_COLUMNS, np.asarray(r.pose, float)))
        rec |= dict(zip(LANDMARK_COLUMNS, np.round(np.concatenate(
            [r.landmarks[:, 0], r.landmarks[:, 1]]).astype(float), 1)))
        rec |= dict(zip(BOX_COLUMNS, np.round(r.box.astype(float), 1)))
        rec |= dict(zip(KP_COLUMNS, np.round(np.concatenate([r.kp[:, 0], r.kp[:, 1]]).astype(float), 1)))
        for j, au in enumerate(aus):
            p = None if r.probs is None else float(r.probs[j])
            rec[f"{au}_c"] = None if p is None else int(p >= thresholds[au])
            rec[f"{au}_p"] = None if p is None else round(p, 4)
        recs.append(rec)
    prefix = ["file", "face"] if files is not None else ["frame", "face_id", "timestamp"]
    order = [*prefix, "confidence", "success", *POSE_COLUMNS, *LANDMARK_COLUMNS, *BOX_COLUMNS, *KP_COLUMNS,
             *[f"{au}_c" for au in aus], *[f"{au}_p" for au in aus], REASON_COLUMN]
    df = pd.DataFrame(recs, columns=order)
    for au in aus:  # nullable ints: an empty cell, never 0, where no face was found
        df[f"{au}_c"] = df[f"{au}_c"].astype("Int8")
    if random_weights:
        df[UNTRAINED_COLUMN] = 1
    return df


def write_table(df: pd.DataFrame, path: Path, fmt: str) -> None:
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            text = fixed_decimals(df).to_csv(index=False, sep="\x1f", na_rep="")
            tmp.write_text(text.replace("\x1f", CSV_SEP))


def decimals(column: str) -> int:
    if column == "timestamp":
        return TIMESTAMP_DECIMALS
    return PIXEL_DECIMALS if column.startswith(PIXEL_PREFIXES) else OTHER_DECIMALS


def fixed_decimals(df: pd.DataFrame) -> pd.DataFrame:
    """Float columns as text with `decimals(column)` places (empty where NaN)."""
    out = df.copy()
    for c in df.columns:
        if pd.api.types.is_float_dtype(df[c]):
            v = df[c].to_numpy(float)
            text = np.char.mod(f"%.{decimals(c)}f", np.nan_to_num(v))
            out[c] = np.where(np.isnan(v), "", text)
    return out


def _runs(frames: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) of each run of consecutive frame numbers."""
    if len(frames) == 0:
        return []
    breaks = np.flatnonzero(np.diff(frames) != 1)
    return list(zip(frames[np.r_[0, breaks + 1]], frames[np.r_[breaks, len(frames) - 1]]))


# The timeline's layout (inches): one row per AU, room for the AU names on the left, the frame
# axis below, the title (and the random-weights banner, which may wrap to two lines) above.
TIMELINE_WIDTH_IN, TIMELINE_ROW_IN, TIMELINE_LEFT_IN = 10.0, 0.55, 0.7
TIMELINE_BOTTOM_IN, TIMELINE_TOP_IN, TIMELINE_TITLE_IN, TIMELINE_BANNER_IN = 0.55, 0.35, 0.3, 0.4


def timeline(df: pd.DataFrame, aus: list[str], title: str, path: Path, banner: bool) -> None:
    """Per-AU probability against time for face 0, frames without a face shaded grey."""
    from stages.report_figures import plt, save_figure

    d = df[df.face_id == 0] if "face_id" in df else df
    x = d["frame"].to_numpy()
    # fixed margins in inches, not tight_layout (which measures every label): 0.25 s a timeline
    # of 12 AUs against 0.35 s (measured, warm)
    top = TIMELINE_TOP_IN + (TIMELINE_BANNER_IN if banner else 0.0)
    h = TIMELINE_ROW_IN * len(aus) + TIMELINE_BOTTOM_IN + top
    fig, axes = plt.subplots(len(aus), 1, figsize=(TIMELINE_WIDTH_IN, h), sharex=True,
                             squeeze=False)
    gaps = _runs(x[d["success"].to_numpy() == 0])
    for ax, au in zip(axes[:, 0], aus):
        for first, last in gaps:  # one span per run of face-less frames, a lone one included
            ax.axvspan(first - 0.5, last + 0.5, color="#dddddd", linewidth=0)
        p = pd.to_numeric(d[f"{au}_p"], errors="coerce").to_numpy(float)
        ax.plot(x, p, lw=1, color="#1f77b4", marker=".", ms=3)  # a lone face frame shows too
        ax.set_ylim(-0.05, 1.05)
        ax.set_yticks([])
        ax.set_ylabel(au, rotation=0, ha="right", va="center", fontsize=8)
    axes[-1, 0].set_xlabel("frame (grey: no face)")
    fig.suptitle(title, fontsize=9, y=1 - (top - TIMELINE_TITLE_IN) / h, va="bottom")
    fig.subplots_adjust(left=TIMELINE_LEFT_IN / TIMELINE_WIDTH_IN, right=0.99,
                        bottom=TIMELINE_BOTTOM_IN / h, top=1 - top / h, hspace=0.15)
    save_figure(fig, path, RANDOM_WEIGHTS_BANNER if banner else None)


def save_aligned(folder: Path, row: Row, image_name: str | None = None) -> None:
    """OpenFace's convention: {stem}_aligned/frame_det_{face:02d}_{frame:06d}.png (1-based) for
    video frames; {image stem}_det_{face:02d}.png for independent images."""
    name = (f"frame_det_{row.face_id:02d}_{row.frame + 1:06d}.png" if image_name is None
            else f"{Path(image_name).stem}_det_{row.face_id:02d}.png")
    ok, data = cv2.imencode(".png", cv2.cvtColor(row.crop, cv2.COLOR_RGB2BGR))
    with atomic_path(folder / name) as tmp:
        tmp.write_bytes(data.tobytes())


def render(frames, df: pd.DataFrame, aus: list[str], path: Path, fps: float, banner: bool) -> None:
    """An annotated copy of the video from its table (a second decoding pass, so memory stays
    flat): each face's box and the AUs that are on."""
    by_frame = {f: g for f, g in df[df.success == 1].groupby("frame")}

    def annotated():
        for index, frame in frames:  # (H, W, 3) RGB, drawn on in place
            for r in by_frame.get(index + 1, pd.DataFrame()).itertuples():
                x0, y0, x1, y1 = (int(getattr(r, c)) for c in BOX_COLUMNS)
                on = [au for au in aus if getattr(r, f"{au}_c") == 1]
                cv2.rectangle(frame, (x0, y0), (x1, y1), (0, 200, 0), 2)
                cv2.putText(frame, f"{r.face_id}: " + " ".join(on), (x0, max(y0 - 6, 12)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 200, 0), 1, cv2.LINE_AA)
            if banner:
                cv2.putText(frame, "UNTRAINED BACKBONE: not AU detection", (8, 20),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 0, 0), 2, cv2.LINE_AA)
            yield frame

    write_video(annotated(), path, fps)
