"""The record `aunet predict` writes beside each input's outputs, and what `--skip-existing`
checks before it trusts them (docs/predict.md, "Skipping what is done").

`{out}/{name}.json` is written last, after every output of the input is in place; it says
`complete: true` only when the input succeeded whole (a truncated video's record says false,
with the reason). It holds the bundle's id, the options, the input's size and modification time
(each image's, for a folder), the table's row count and the SHA-256 of every output file, and
the number of aligned crops. An input is skipped only when all of these still hold: a failed or
truncated input, a table cut or edited by hand, a missing timeline or crop, a changed input, an
other bundle or options: each is predicted again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.predict.bundle import bundle_id
from pipeline.config import OutputFormat, PredictConfig
from stages.predict_inputs import PredictUnit, UnitKind
from store.provenance import write_json

HASH_BLOCK = 1 << 20


def record_path(cfg: PredictConfig, unit: PredictUnit) -> Path:
    return Path(cfg.out) / f"{unit.name}.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def input_signature(unit: PredictUnit) -> list:
    """[name, size, mtime_ns] of the video, or of each image: a changed input is redone."""
    files = [Path(unit.source)] if unit.kind is UnitKind.VIDEO else [Path(f) for f in unit.files]
    out = []
    for f in files:
        try:
            st = f.stat()
            out.append([f.name, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([f.name, None, None])
    return out


def table_rows(path: Path, fmt: OutputFormat) -> int:
    """Rows of a written table, from the file itself (a CSV's lines after its header)."""
    if fmt is OutputFormat.PARQUET:
        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as fh:
        return max(sum(1 for line in fh if line.strip()) - 1, 0)


def write_record(cfg: PredictConfig, unit: PredictUnit, summary: dict, options: dict, *,
                 table: Path, rows: int, files: list[Path], aligned: int,
                 error: str | None = None) -> None:
    """Call after every output of the unit is written (the record is what makes them count)."""
    out = Path(cfg.out)
    write_json(record_path(cfg, unit), summary | {
        "bundle": bundle_id(cfg.model), "options": options, "complete": error is None,
        "error": error, "input_files": input_signature(unit), "rows": rows,
        "table": table.name, "files": {f.relative_to(out).as_posix(): sha256(f) for f in files},
        "aligned_crops": aligned})


def forget(cfg: PredictConfig, unit: PredictUnit) -> None:
    """Before an input is predicted again: its old record no longer vouches for anything."""
    record_path(cfg, unit).unlink(missing_ok=True)


def up_to_date(cfg: PredictConfig, unit: PredictUnit, options: dict) -> bool:
    """Whether every output of a complete earlier run of this input, bundle and options is
    still what its record says (see the module docstring)."""
    out = Path(cfg.out)
    try:
        rec = json.loads(record_path(cfg, unit).read_text())
        table = out / rec["table"]
        if not (rec.get("complete") is True and rec.get("bundle") == bundle_id(cfg.model)
                and rec.get("options") == options
                and rec.get("input_files") == input_signature(unit)
                and table.name == f"{unit.name}.{cfg.format.value}"
                and table_rows(table, cfg.format) == rec["rows"]):
            return False
        if any(sha256(out / name) != digest for name, digest in rec["files"].items()):
            return False
        aligned = out / f"{unit.name}_aligned"
        n = len(list(aligned.glob("*.png"))) if aligned.is_dir() else 0
        return n == rec.get("aligned_crops", 0)
    except (OSError, ValueError, KeyError, TypeError):  # missing, unreadable, not ours: redo
        return False
