"""Atomic writes and provenance records.

Every artifact is written to a temporary name in its own folder and renamed into place, so a
killed run leaves either the old artifact or the new one, never half of one. Beside it goes a
`<name>.provenance.json` saying how it was made: stage, config, code version, input fingerprints.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.hashing import file_sha256  # noqa: F401  (re-exported for stages)

RANDOM_WEIGHTS_BANNER = (
    "!!! UNTRAINED BACKBONE: features come from randomly initialised FAN weights (explicit "
    "opt-in). Numbers show the mechanics only, not AU detection accuracy. !!!"
)


@contextmanager
def atomic_path(final: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `final`; rename it onto `final` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))


def write_table(path: Path, table: pa.Table) -> None:
    with atomic_path(path, ".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")


def code_version(*modules: str) -> str:
    """Package version plus a hash of the named modules' source: changes when their code does."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = version("aunet-pipeline")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        pkg = "0+unknown"
    h = hashlib.sha256()
    for name in sorted(modules):
        mod = importlib.import_module(name)
        h.update(name.encode())
        h.update(Path(mod.__file__).read_bytes())
    return f"{pkg}+{h.hexdigest()[:12]}"


def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-able object (parameters, input fingerprints)."""
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def provenance_path(artifact: Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".provenance.json")


def write_provenance(artifact: Path, *, stage: str, config: dict, code: str,
                     inputs: dict[str, str], extra: dict | None = None) -> dict:
    record = {
        "stage": stage,
        "artifact": str(artifact),
        "config": config,
        "code_version": code,
        "inputs": inputs,
        "key": fingerprint({"config": config, "code": code, "inputs": inputs}),
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        **(extra or {}),
    }
    write_json(provenance_path(artifact), record)
    return record


def read_provenance(artifact: Path) -> dict | None:
    p = provenance_path(artifact)
    return json.loads(p.read_text()) if p.exists() else None


def is_current(artifact: Path, *, config: dict, code: str, inputs: dict[str, str]) -> bool:
    """True when the artifact exists and was made from exactly these inputs, config and code."""
    rec = read_provenance(artifact)
    if rec is None or not Path(artifact).exists():
        return False
    return rec.get("key") == fingerprint({"config": config, "code": code, "inputs": inputs})
