"""The community list format (ME-GraphAU, JAA-Net): two row-aligned text files.

`dataset.list_paths`: one image path per line, relative to `dataset.root` unless absolute.
`dataset.list_labels`: the same number of lines, each as many space-separated 0/1 values as the
AU set has AUs, in the AU set's order.
A path shaped `{subject}/{session}/{frame}.ext` (integer frame) gives subject, session and
frame. Otherwise subject = the parent folder's name, session is empty, and frame = the file
name when it is an integer, else the line number.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from pipeline.config import DatasetConfig
from pipeline.errors import ConfigError, MissingInput
from pipeline.manifest import ManifestError, ManifestReport

ALPHABET = {"0": 0, "1": 1}
_FRAME_NUMBER = re.compile(r"[0-9]+")  # a file name that is a frame number


def _lines(path: Path | None, key: str) -> list[str]:
    if path is None:
        raise ConfigError(f"layout 'list' needs dataset.{key} (a text file, one line per image)")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise MissingInput(f"dataset.{key}: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: cannot read dataset.{key}: {e}") from None
    while lines and not lines[-1].strip():  # a trailing newline is not a row
        lines.pop()
    return lines


def identity(rel: Path, line_no: int) -> tuple[str, str, int]:
    """(subject, session, frame) from an image path, as the module docstring says."""
    parts = rel.parts
    # ASCII digits only: str.isdigit() also accepts '²' or '①', which int() refuses
    numeric = _FRAME_NUMBER.fullmatch(rel.stem) is not None
    if numeric and len(parts) >= 3:
        return parts[-3], parts[-2], int(rel.stem)
    frame = int(rel.stem) if numeric else line_no
    return rel.parent.name, "", frame


def read(cfg: DatasetConfig, report: ManifestReport) -> pd.DataFrame:
    paths = _lines(cfg.list_paths, "list_paths")
    labels = _lines(cfg.list_labels, "list_labels")
    if not paths:
        raise ManifestError(f"{cfg.list_paths}: no image paths: empty dataset")
    if len(paths) != len(labels):
        short, long_ = sorted([(len(paths), cfg.list_paths), (len(labels), cfg.list_labels)],
                              key=lambda t: t[0])
        raise ManifestError(f"{long_[1]}:{short[0] + 1}: the two list files must be row-aligned, "
                            f"but {cfg.list_paths} has {len(paths)} lines and {cfg.list_labels} "
                            f"has {len(labels)}")
    columns = cfg.au_set.columns
    rows: list[dict] = []
    for i, (img, lab) in enumerate(zip(paths, labels)):
        line_no = i + 1
        values = lab.split()
        if len(values) != len(columns):
            report.bad("wrong_column_count", f"{cfg.list_labels}:{line_no}", f"{len(values)} "
                       f"labels, the AU set '{cfg.au_set.value}' has {len(columns)} "
                       f"({' '.join(columns)})")
            continue
        odd = [v for v in values if v not in ALPHABET]
        if odd:
            report.bad("label_out_of_alphabet", f"{cfg.list_labels}:{line_no}",
                       f"value {odd[0]!r}; list labels are 0 or 1")
            continue
        text = img.strip()
        if not text:
            report.bad("no_image", f"{cfg.list_paths}:{line_no}", "empty image path")
            continue
        p = Path(text)
        full = p if p.is_absolute() else cfg.root / p
        if not full.is_file():
            report.bad("no_image", f"{cfg.list_paths}:{line_no}", f"image not found: {full}")
            continue
        rel = full.relative_to(cfg.root) if full.is_relative_to(cfg.root) else p
        subject, session, frame = identity(rel, line_no)
        rec = {"subject": subject, "session": session, "frame": frame, "image_path": str(full)}
        rec.update({c: ALPHABET[v] for c, v in zip(columns, values)})
        rows.append(rec)
    return pd.DataFrame(rows)
