"""Content hashes of files, remembered by file identity so big datasets are hashed once.

Artifact identity comes from content, never from names or times: the value recorded everywhere
is the SHA-256 of the bytes, so a `touch` (or a copy with new times) changes nothing. Hashing 150k
images on every plan would be slow, so a hash is remembered per file version (path, size,
mtime_ns, inode): in memory for the process, and, where `use_cache_file` named one (the catalog
does: a SQLite file inside the store), across processes. A file is re-hashed when any of those
four changes: every ordinary edit (an editor's write sets a new mtime_ns; saving by rename gives
a new inode). What is not seen is an edit in place that keeps the size and the mtime: one
that sets the mtime back on purpose (`touch -d` to the old time), or a second same-size write
within the file system's timestamp tick (a few milliseconds on Linux) of the write that was
hashed. Delete `.cache/filehash.sqlite` in the store to re-hash everything.
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Iterable

HASH_BLOCK = 1 << 20
_LOCK = threading.Lock()
_MEMO: dict[tuple, str] = {}  # (path, size, mtime_ns, ino) -> sha256
_STATE: dict[str, object] = {"db": None, "loaded": None}


def _sha256(path: str | Path, block: int = HASH_BLOCK) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def use_cache_file(path: str | Path | None) -> None:
    """Also remember hashes in this SQLite file (None: in memory only)."""
    with _LOCK:
        _STATE["db"] = None if path is None else Path(path)


def _load() -> None:
    """Read the cache file into memory once per process and file."""
    db = _STATE["db"]
    if db is None or _STATE["loaded"] == db or not db.exists():
        return
    try:
        # sqlite3's own `with` commits but never closes: closing() does
        with closing(sqlite3.connect(db, timeout=10)) as con:
            rows = con.execute("SELECT path, size, mtime_ns, ino, sha256 FROM files").fetchall()
        _MEMO.update({tuple(r[:4]): r[4] for r in rows})
    except sqlite3.Error:  # a cache that cannot be read is only a cache
        pass
    _STATE["loaded"] = db


def _save(new: list[tuple]) -> None:
    db = _STATE["db"]
    if db is None or not new:
        return
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(db, timeout=10)) as con, con:  # closed, and committed
            con.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, "
                        "mtime_ns INTEGER, ino INTEGER, sha256 TEXT)")
            con.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)", new)
    except (sqlite3.Error, OSError):  # read-only store, full disk: hash again next time
        pass


def _identity(path: str | Path) -> tuple:
    p = os.path.abspath(path)
    st = os.stat(p)
    return (p, st.st_size, st.st_mtime_ns, st.st_ino)


def hash_files(paths: Iterable[str | Path], missing_ok: bool = False) -> dict[str, str | None]:
    """{path as given: SHA-256 of its bytes}. A file that cannot be read raises OSError, or maps
    to None with `missing_ok` (its consumer records the failure per frame)."""
    with _LOCK:
        _load()
        out, new = {}, []
        try:
            for path in paths:
                try:
                    key = _identity(path)
                    digest = _MEMO.get(key)
                    if digest is None:
                        digest = _sha256(key[0])
                        _MEMO[key] = digest
                        new.append((*key, digest))
                except OSError:
                    if not missing_ok:
                        raise
                    digest = None
                out[str(path)] = digest
        finally:
            _save(new)
    return out


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of one file's bytes (remembered like `hash_files`)."""
    return hash_files([path])[str(path)]
