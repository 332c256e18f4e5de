"""The cache of bundles' networks exported to ONNX (pipeline/predict/runtime.py runs them).

One file per network, `{cache}/onnx/{name}-{key}.onnx`, where key is the fingerprint of what
decides the export's bytes: the bundle's file hashes (FAN and head), the crop size, the AUs, the
torch and onnxruntime versions, the opset and the export code's version. Written atomically
with the user's umask, so a killed export leaves nothing that looks whole and two processes
exporting at once both end with one good file. `{cache}` is `$AUNET_CACHE`, else
`$XDG_CACHE_HOME/aunet`, else `~/.cache/aunet`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from store.provenance import atomic_path, fingerprint

CACHE_ENV = "AUNET_CACHE"


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aunet"


def cached_export(name: str, identity: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """The cached export of `name` for `identity`; `write(tmp_path)` makes it when absent."""
    path = cache_root() / "onnx" / f"{name}-{fingerprint(identity)}.onnx"
    if not path.is_file():
        with atomic_path(path) as tmp:
            write(tmp)
    return path
