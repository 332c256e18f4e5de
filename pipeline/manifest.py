"""The manifest: one row per frame, the table every later stage indexes by `row`.

Columns (declared in `manifest_schema`): dataset, subject, session, video_id, frame, image_path,
video_path, video_frame, box_x0..box_y1, landmarks (flat x0,y0,x1,y1,...), fold, AUxx (int8, null
= unknown), AUxx_intensity where the dataset has it. Row order is (video_id, frame), and `row` is
the position: crop and feature stores are indexed by it.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.aus import AUSet
from pipeline.config import OnBadInput
from pipeline.errors import InputError

MANIFEST_SCHEMA_VERSION = "1"
BOX_COLUMNS = ["box_x0", "box_y0", "box_x1", "box_y1"]
MAX_EXAMPLES = 20  # examples kept per left-out reason in the report


class ManifestError(InputError):
    """Bad input: the message names the file and line (or row / frame)."""


@dataclass
class ManifestReport:
    """Counts what was kept and why anything was left out; raises in strict mode."""

    policy: OnBadInput = OnBadInput.RAISE
    left_out: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: Counter = field(default_factory=Counter)  # informational (e.g. uncoded images)

    def bad(self, reason: str, where: str, message: str, n: int = 1) -> None:
        if self.policy is OnBadInput.RAISE:
            raise ManifestError(f"{where}: {message} [{reason}] (set dataset.on_bad_input: skip "
                                "to leave such rows out and count them)")
        self.left_out[reason] += n
        ex = self.examples.setdefault(reason, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(f"{where}: {message}")

    def note(self, what: str, n: int = 1) -> None:
        self.notes[what] += n

    def as_dict(self, kept: int) -> dict:
        return {"frames_kept": kept, "left_out": dict(self.left_out),
                "left_out_total": int(sum(self.left_out.values())),
                "examples": self.examples, "notes": dict(self.notes)}


MIX_COLUMNS = [("member", pa.string()), ("member_row", pa.int64())]  # mixed runs: where a row lives


def manifest_schema(au_set: AUSet, intensity: bool = False, mixed: bool = False) -> pa.Schema:
    fields = [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("subject", pa.string(), nullable=False),
        pa.field("session", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("frame", pa.int64(), nullable=False),
        pa.field("image_path", pa.string()),
        pa.field("video_path", pa.string()),
        pa.field("video_frame", pa.int64()),
        *[pa.field(c, pa.float32()) for c in BOX_COLUMNS],
        pa.field("landmarks", pa.list_(pa.float32())),
        pa.field("fold", pa.int8(), nullable=False),
        *[pa.field(c, pa.int8()) for c in au_set.columns],
    ]
    if intensity:
        fields += [pa.field(f"{c}_intensity", pa.int8()) for c in au_set.columns]
    if mixed:
        fields += [pa.field(n, t, nullable=False) for n, t in MIX_COLUMNS]
    meta = {"schema": "manifest", "schema_version": MANIFEST_SCHEMA_VERSION, "au_set": au_set.value}
    return pa.schema(fields, metadata=meta)


def finalize(df: pd.DataFrame, dataset: str, au_set: AUSet, report: ManifestReport,
             intensity: bool = False, mixed: bool = False) -> pa.Table:
    """Fill optional columns, check duplicates, sort, number rows; return a typed Arrow table."""
    if df.empty:
        raise ManifestError(f"dataset '{dataset}': no frames found (empty dataset); check "
                            "dataset.root and the layout")
    df = df.copy()
    df["dataset"] = dataset
    for col, default in (("session", ""), ("image_path", None), ("video_path", None),
                         ("video_frame", None), ("landmarks", None)):
        if col not in df:
            df[col] = default
    for c in BOX_COLUMNS:
        if c not in df:
            df[c] = np.nan
    if "video_id" not in df:
        df["video_id"] = df["subject"].astype(str) + "/" + df["session"].astype(str)
    for c in au_set.columns + ([f"{c}_intensity" for c in au_set.columns] if intensity else []):
        if c not in df:
            df[c] = pd.NA
        df[c] = pd.array(df[c], dtype="Int8")
    dup = df.duplicated(["video_id", "frame"], keep="first")
    if dup.any():
        for _, r in df[dup].head(MAX_EXAMPLES).iterrows():
            report.bad("duplicate_frame", f"video {r['video_id']} frame {r['frame']}",
                       "frame listed more than once; the first occurrence is kept")
        extra = int(dup.sum()) - min(int(dup.sum()), MAX_EXAMPLES)
        if extra:
            report.left_out["duplicate_frame"] += extra
        df = df[~dup]
    df = df.sort_values(["video_id", "frame"], kind="stable").reset_index(drop=True)
    df["row"] = np.arange(len(df), dtype=np.int64)
    schema = manifest_schema(au_set, intensity, mixed)
    return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)


def label_matrix(table: pa.Table | pd.DataFrame, au_set: AUSet) -> np.ndarray:
    """(N, n_AU) float32 labels with NaN for unknown."""
    df = table.to_pandas() if isinstance(table, pa.Table) else table
    return df[au_set.columns].astype("Float32").to_numpy(dtype=np.float32, na_value=np.nan)


def au_set_of(table: pa.Table | pa.Schema) -> AUSet:
    schema = table if isinstance(table, pa.Schema) else table.schema
    meta = schema.metadata or {}
    raw: Optional[bytes] = meta.get(b"au_set")
    if raw is None:
        raise ManifestError("manifest has no au_set in its schema metadata; rebuild it")
    return AUSet(raw.decode())
