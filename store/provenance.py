"""Atomic writes with the user's umask, and provenance records.

Every artifact is written under a temporary name in its own folder and renamed into place, so a
killed run leaves either the old artifact or the new one, never half of one (the next run of the
stage removes the temporary files a killed one left: `store.catalog.Catalog.clean`). Beside a
file artifact goes `<name>.provenance.json`; a Zarr store keeps the same record in its
attributes. A record says how the artifact was made:

    stage       the stage that wrote it
    artifact    its store-relative name (a store can move; identity never holds the store root)
    identity    what the config asked for (parameters, upstream identities): also its path's id
    inputs      content keys of what it was computed from (upstream artifact keys, file hashes)
    code        store.codekey.code_key of the stage (its modules and all they import)
    key         fingerprint(identity, inputs, code): equal keys mean an identical artifact
    sha256      for file artifacts: the file's content hash, checked whenever the file is trusted
    versions    torch, zarr, numpy ... (informational), created_utc, host
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import StoreWriteError, UserError
from store import location

RANDOM_WEIGHTS_BANNER = (
    "!!! UNTRAINED BACKBONE: features come from randomly initialised FAN weights (explicit "
    "opt-in). Numbers show the mechanics only, not AU detection accuracy. !!!"
)
TMP_SUFFIX = ".tmp"  # temporary files: `.{name}.{random}{suffix}.tmp` beside the target
BUILD_MARK = ".building-"  # temporary folders: `.{name}.building-{random}` beside the target
ASIDE_MARK = ".replaced"  # `.{name}.replaced`: the old folder while atomic_dir swaps in a new one
KEY_LENGTH = 16


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _writable_mode(mask: int | None = None) -> int:
    """The mode a plain open() would give a new file: 0666 minus the umask."""
    return 0o666 & ~(current_umask() if mask is None else mask)


@contextmanager
def atomic_path(final: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `final`; rename it onto `final` only on success.

    The file gets the mode the user's umask gives new files (mkstemp alone would make it 0600,
    unreadable to colleagues sharing a store). On an object store the temporary file is local
    and is uploaded in one PUT on success (`store.location.upload_on_success`).
    """
    if location.is_remote(final):
        with location.upload_on_success(final, suffix) as tmp:
            yield tmp
        return
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + TMP_SUFFIX,
                                   dir=final.parent)
        os.fchmod(fd, _writable_mode())
        os.close(fd)
    except OSError as e:
        raise StoreWriteError(f"cannot write {final}: {e.strerror or e}") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Build a folder (a Zarr store) under a temporary name beside `final`, then rename it in.

    A kill while building leaves only the temporary folder (removed by the next run), never a
    half-made store at `final`. An existing `final` is replaced in three renames-or-deletes,
    each of which a kill may follow: (1) the old folder is renamed aside (`aside_path`), (2) the
    new one is renamed in, (3) the old one is deleted. After a kill between (1) and (2) the old
    folder is only aside; `recover_dir` (run by the cleanup of every stage and when a reader
    takes its lock) renames it back; after (2) it deletes it. So `final` is always the old
    folder or the new one, whole.

    On an object store (no renames) the folder is built locally and uploaded with its root
    `zarr.json` last (`store.location.publish_dir`): readers see the old store, none, or the new.
    """
    if location.is_remote(final):
        with tempfile.TemporaryDirectory(prefix="aunet-build-") as tmp:
            yield Path(tmp) / final.name
            location.publish_dir(Path(tmp) / final.name, final)
        return
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)  # a replacement a kill interrupted: finish or undo it first
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}{BUILD_MARK}", dir=final.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        yield tmp
        aside = aside_path(final)
        if final.exists():
            os.rename(final, aside)  # (1) both renames are atomic within one folder
        os.rename(tmp, final)  # (2)
        shutil.rmtree(aside, ignore_errors=True)  # (3)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def aside_path(final: Path) -> Path:
    """Where `atomic_dir` puts the folder it replaces until the new one is in place."""
    final = Path(final)
    return final.with_name(f".{final.name}{ASIDE_MARK}")


def recover_dir(final: Path) -> str | None:
    """Finish or undo a replacement of `final` that a kill interrupted (see `atomic_dir`):
    the old folder set aside is renamed back when `final` is missing ("restored"), deleted when
    the new folder is in place ("removed"); None when there was nothing to do. Call where no
    writer of `final` can be running (under its stage's exclusive lock or a shared one)."""
    final = Path(final)
    aside = aside_path(final)
    if not aside.is_dir():
        return None
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        return "removed"
    try:
        os.rename(aside, final)
    except FileNotFoundError:  # another reader restored it a moment ago
        return None
    return "restored"


def recover_dirs(base: Path) -> list[Path]:
    """`recover_dir` for every set-aside folder in `base` and the folders right under it (where
    the catalog puts its Zarr stores); returns the folders restored or removed."""
    base = Path(base)
    if not base.is_dir():
        return []
    found = [*base.glob(f".*{ASIDE_MARK}"), *base.glob(f"*/.*{ASIDE_MARK}")]
    out = []
    for aside in sorted(found):
        final = aside.with_name(aside.name[1:-len(ASIDE_MARK)])
        if recover_dir(final) is not None:
            out.append(aside)
    return out


def output_folder(path: Path, flag: str = "--out") -> Path:
    """`path` as a folder to write into, created if missing; a user error when it, or a folder
    above it, is a regular file."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise UserError(f"{flag} {path}: {p} is a file, not a folder; give a folder (it is "
                            "created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreWriteError(f"cannot create {flag} {path}: {e.strerror or e}") from None
    return path


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))


def write_table(path: Path, table: pa.Table) -> None:
    with atomic_path(path, ".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")


def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-able object (parameters, input keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]


def artifact_key(identity: Any, inputs: Any, code: str) -> str:
    return fingerprint({"identity": identity, "inputs": inputs, "code": code})


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("aunet-pipeline", "torch", "face-alignment", "zarr", "numpy", "pyarrow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
            out[pkg] = "unknown"
    return out


def provenance_path(artifact: Path) -> Path:
    artifact = location.as_path(artifact)
    return artifact.with_name(artifact.name + ".provenance.json")


def record(*, stage: str, name: str, identity: Any, inputs: Any, code: str,
           extra: dict | None = None) -> dict:
    """A provenance record (see the module docstring); `name` is store-relative."""
    return {"stage": stage, "artifact": name, "identity": identity, "inputs": inputs,
            "code": code, "key": artifact_key(identity, inputs, code),
            "versions": library_versions(),
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(), **(extra or {})}


def write_provenance(artifact: Path, rec: dict) -> dict:
    """Write a file artifact's record beside it, with the file's SHA-256 (call after the file)."""
    rec = dict(rec, sha256=location.sha256(artifact))
    write_json(provenance_path(artifact), rec)
    return rec


def read_provenance(artifact: Path) -> dict | None:
    p = provenance_path(artifact)
    try:
        return json.loads(p.read_text()) if p.exists() else None
    except (OSError, json.JSONDecodeError):  # a torn or foreign record is no record
        return None


def trusted(artifact: Path, key: str) -> dict | None:
    """The record of a file artifact that exists, was made with `key` and still holds the bytes
    it was written with (a corrupt or replaced file is not trusted); else None."""
    artifact = location.as_path(artifact)
    rec = read_provenance(artifact)
    if rec is None or rec.get("key") != key or not artifact.is_file():
        return None
    try:
        return rec if location.sha256(artifact) == rec.get("sha256") else None
    except OSError:
        return None
