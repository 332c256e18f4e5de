"""pipeline/hashing.py: content hashes remembered per file version; its SQLite cache is closed."""
from __future__ import annotations

import os
import sqlite3

import pytest

from pipeline import hashing


@pytest.fixture()
def connections(monkeypatch, tmp_path):
    made = []
    real = sqlite3.connect

    def tracking(*a, **k):
        con = real(*a, **k)
        made.append(con)
        return con

    monkeypatch.setattr(hashing.sqlite3, "connect", tracking)
    hashing.use_cache_file(tmp_path / "cache" / "filehash.sqlite")
    hashing._STATE["loaded"] = None
    yield made
    hashing.use_cache_file(None)


def _closed(con: sqlite3.Connection) -> bool:
    try:
        con.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


def test_cache_connections_are_closed(tmp_path, connections):
    f = tmp_path / "a.txt"
    f.write_text("one")
    hashing.hash_files([f])  # writes the cache file
    hashing._STATE["loaded"] = None
    hashing._MEMO.clear()
    g = tmp_path / "b.txt"
    g.write_text("two")
    hashing.hash_files([g])  # reads it back, then writes one more row
    assert len(connections) >= 2 and all(_closed(c) for c in connections)
    rows = sqlite3.connect(tmp_path / "cache" / "filehash.sqlite").execute(
        "SELECT count(*) FROM files").fetchone()
    assert rows == (2,)  # both rows committed


def test_an_edit_of_the_same_size_with_a_new_mtime_is_seen(tmp_path):
    f = tmp_path / "labels.csv"
    f.write_text("0,1\n")
    before = hashing.file_sha256(f)
    st = f.stat()
    f.write_text("1,0\n")  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # the next nanosecond is enough
    assert hashing.file_sha256(f) != before
