"""File hashing shared by the backbone loader (pipeline) and provenance records (store)."""
from __future__ import annotations

import hashlib
from pathlib import Path

HASH_BLOCK = 1 << 20


def file_sha256(path: str | Path, block: int = HASH_BLOCK) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
