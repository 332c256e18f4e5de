"""The crop store: aligned faces and their per-frame records in one Zarr v3 group.

Arrays are indexed by manifest `row` and chunked by blocks of `chunk_frames` rows along the first
axis, so one unit of work (one block) writes its own chunk files and no other unit's. A block is
written in this order: `chunk_done` cleared, the data and per-row `digest`, `chunk_key`, then
`chunk_done` set; a killed run leaves at worst a block whose flag is unset, which is recomputed.
`chunk_key` and `chunk_done` are chunked one block per file (concurrent units never rewrite a
shared file). The store is created whole under a temporary name and renamed into place (on an
object store: built locally and uploaded with its root zarr.json last, store.location).

Keys:
- `chunk_key[b]`: the input key of block b (its manifest rows with paths relative to the dataset
  root, the media files' content hashes, the faces identity, the per-frame code): `block_keys`.
- `digest[r]`: a hash of row r's output (success flag and crop pixels): what the features of
  that row are computed from, so features depend on crops' content, not on how they were made.
- attrs `provenance.key`: fingerprint of all block keys, written by `finalize` only when every
  block is done; a consumer checks it against the keys the config gives (`verify`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from pipeline.config import Layout, RunConfig
from pipeline.errors import MissingArtifact, StaleArtifact
from pipeline.hashing import hash_files
from store import location
from store import manifests
from store.catalog import Catalog
from store.codekey import code_key
from store.identity import faces_identity, relative
from store.provenance import atomic_dir, fingerprint

N_KP = 5
KEY_NONE = 0  # chunk_key of a block never written
# The per-frame work (reading, detecting, choosing, aligning) and the detectors it is given:
# their code key is part of every block key.
CODE_ENTRY = ("stages.faces_frames", "pipeline.faces.factory:make_detector")
ROW_COLUMNS = ["row", "video_id", "frame", "image_path", "video_path", "video_frame",
               "box_x0", "box_y0", "box_x1", "box_y1", "landmarks"]
# Layouts whose image folders hold the frames of one video: the face is tracked through them.
SEQUENCE_LAYOUTS = {Layout.BP4D, Layout.DISFA, Layout.AFFWILD2, Layout.DEMO}
REQUIRED = ("crops", "success", "reason", "boxes", "keypoints", "scores", "n_faces", "digest",
            "chunk_done", "chunk_key")


def _specs(size: int) -> dict[str, tuple[str, tuple[int, ...], object]]:
    """name -> (dtype, per-frame shape, fill value)."""
    return {
        "crops": ("uint8", (size, size, 3), 0),
        "success": ("bool", (), False),
        "reason": ("uint8", (), 0),
        "boxes": ("float32", (4,), np.nan),
        "keypoints": ("float32", (N_KP, 2), np.nan),
        "scores": ("float32", (), np.nan),
        "n_faces": ("int16", (), 0),
        "digest": ("uint64", (), 0),
    }


def n_chunks(n_frames: int, chunk_frames: int) -> int:
    return -(-n_frames // chunk_frames)


def key_to_int(key: str) -> int:
    """A 16-hex-digit fingerprint as the uint64 stored in `chunk_key`."""
    return int(key, 16)


def row_digests(success: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """(n,) uint64: a hash of each row's success flag and crop pixels."""
    out = np.empty(len(success), np.uint64)
    for i, (ok, crop) in enumerate(zip(success, crops)):
        h = hashlib.sha256(b"1" if ok else b"0")
        h.update(np.ascontiguousarray(crop).tobytes())
        out[i] = np.frombuffer(h.digest()[:8], np.uint64)[0]
    return out


# -- block keys: what the config and the data ask for -------------------------------------------
def sequence_images(cfg: RunConfig) -> bool:
    """Whether consecutive images of one video_id are frames of one video (tracking applies)."""
    return cfg.dataset.layout in SEQUENCE_LAYOUTS


def block_keys(cfg: RunConfig, rows: pa.Table, code: str) -> list[str]:
    """The input key of every block of the manifest `rows` (ROW_COLUMNS), in block order.

    Paths enter relative to the dataset root and every media file by its content hash, so a
    moved dataset or a `touch` keeps every key, and one replaced image changes one block's.
    """
    root = cfg.dataset.root
    paths = {p for col in ("image_path", "video_path") for p in rows.column(col).drop_null().to_pylist()}
    media = hash_files(sorted(paths), missing_ok=True)  # None: missing, the frame will fail
    common = {"faces": faces_identity(cfg), "code": code, "sequence": sequence_images(cfg)}
    keys = []
    records = rows.to_pylist()
    step = cfg.faces.chunk_frames
    for start in range(0, len(records), step):
        block = []
        for r in records[start:start + step]:
            r = dict(r)
            for col in ("image_path", "video_path"):
                if r[col]:
                    r[col + "_sha256"] = media[r[col]]
                    r[col] = relative(r[col], root)
            block.append(r)
        keys.append(fingerprint({"rows": block, **common}))
    return keys


def expected_keys(cfg: RunConfig, catalog: Catalog) -> list[str]:
    """The block keys this config and the data as they are now give (read-only; the manifest
    must be current)."""
    manifests.checked(cfg, catalog)
    rows = manifests.rows(catalog, cfg.dataset.name, ROW_COLUMNS)
    return block_keys(cfg, rows, code_key(*CODE_ENTRY))


# -- writing ------------------------------------------------------------------------------------
def is_complete_layout(path: Path) -> bool:
    try:
        g = location.open_group(path, "r")
        return all(name in g for name in REQUIRED)
    except (FileNotFoundError, ValueError, KeyError, OSError):
        return False


def prepare(path: Path, *, n_frames: int, chunk_frames: int, size: int, attrs: dict) -> None:
    """Create the store whole (built aside, renamed in), or resize an existing one to `n_frames`
    rows (written blocks keep their data and keys; plan decides which still hold). A half-made
    store (a kill while an older version created it) is rebuilt."""
    path = location.as_path(path)
    n_blk = n_chunks(n_frames, chunk_frames)
    if path.exists() and is_complete_layout(path):
        g = location.open_group(path, "r+")
        if g["crops"].shape[0] != n_frames:
            for name, (_, shape, _) in _specs(size).items():
                g[name].resize((n_frames, *shape))
            g["chunk_done"].resize((n_blk,))
            g["chunk_key"].resize((n_blk,))
        if any(g.attrs.get(k) != v for k, v in attrs.items()):  # a skipped rerun writes nothing
            g.attrs.update(attrs)
        return
    with atomic_dir(path) as tmp:
        g = location.open_group(tmp, "w")
        for name, (dtype, shape, fill) in _specs(size).items():
            g.create_array(name, shape=(n_frames, *shape), chunks=(chunk_frames, *shape),
                           dtype=dtype, fill_value=fill)
        g.create_array("chunk_done", shape=(n_blk,), chunks=(1,), dtype="bool", fill_value=False)
        g.create_array("chunk_key", shape=(n_blk,), chunks=(1,), dtype="uint64", fill_value=KEY_NONE)
        g.attrs.update(attrs)


def chunk_state(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(done bool (n_chunks,), key uint64 (n_chunks,))."""
    g = location.open_group(path, "r")
    return g["chunk_done"][:], g["chunk_key"][:]


def write_chunk(path: Path, chunk: int, start: int, data: dict[str, np.ndarray], key: str) -> None:
    """Write one block's arrays and digests, then its key, then its done flag (in that order)."""
    g = location.open_group(path, "r+")
    g["chunk_done"][chunk] = False  # a rewrite in progress is not done
    n = len(data["success"])
    data = dict(data, digest=row_digests(data["success"], data["crops"]))
    for name in _specs(g["crops"].shape[1]):
        g[name][start:start + n] = data[name]
    g["chunk_key"][chunk] = np.uint64(key_to_int(key))
    g["chunk_done"][chunk] = True


def chunk_rows_done(done: np.ndarray, chunk_frames: int, n_frames: int) -> np.ndarray:
    """(n_frames,) bool: rows whose block is done (the others were never written)."""
    return np.repeat(np.asarray(done, bool), chunk_frames)[:n_frames]


def store_key(keys: Sequence[str]) -> str:
    return fingerprint(list(keys))


def finalize(path: Path, provenance: dict | None) -> None:
    """Record provenance (None: the store is not complete) in the group attributes."""
    g = location.open_group(path, "r+")
    old = g.attrs.get("provenance")
    if (old or {}).get("key") != (provenance or {}).get("key") or (old is None) != (provenance is None):
        g.attrs["provenance"] = provenance  # a skipped rerun (same key) writes nothing


def verify(path: Path, keys: Sequence[str]) -> dict:
    """The provenance of a complete crop store made from exactly `keys`; MissingArtifact or
    StaleArtifact (saying what to run) otherwise."""
    path = location.as_path(path)
    if not path.exists():
        raise MissingArtifact(f"no crop store at {path}; run `aunet faces` first")
    if not is_complete_layout(path):
        raise StaleArtifact(f"{path} is not a complete crop store; run `aunet faces` to rebuild it")
    g = location.open_group(path, "r")
    rec = g.attrs.get("provenance") or {}
    done, stored = chunk_state(path)
    if not done.all() or rec.get("key") != store_key(keys) or \
            [f"{int(k):016x}" for k in stored] != list(keys):
        todo = int((~done).sum())
        raise StaleArtifact(f"crop store {path} is unfinished ({todo} blocks not done) or was made "
                            "from other frames, media or settings than this config's; run "
                            "`aunet faces` first")
    return rec


@dataclass
class CropStore:
    """Reader: per-frame records as NumPy arrays, crops on demand.

    `read(rows)` -> uint8 (B, size, size, 3) RGB; rows with `success` False are zeros.
    """
    path: Path

    def __post_init__(self) -> None:
        self.path = location.as_path(self.path)
        if not (self.path / "zarr.json").exists():
            raise MissingArtifact(f"no crop store at {self.path}; run `aunet faces` first")
        self.group = location.open_group(self.path, "r")

    @property
    def n_frames(self) -> int:
        return int(self.group["crops"].shape[0])

    @property
    def size(self) -> int:
        return int(self.group["crops"].shape[1])

    def array(self, name: str) -> np.ndarray:
        """A whole per-frame array (success, reason, boxes, keypoints, scores, n_faces, digest)."""
        return self.group[name][:]

    # per-frame records, read once: success (N,) bool, reason (N,) uint8, boxes (N, 4) float32,
    # keypoints (N, 5, 2) float32, scores (N,) float32, n_faces (N,) int16
    success = cached_property(lambda self: self.array("success"))
    reason = cached_property(lambda self: self.array("reason"))
    boxes = cached_property(lambda self: self.array("boxes"))
    keypoints = cached_property(lambda self: self.array("keypoints"))
    scores = cached_property(lambda self: self.array("scores"))
    n_faces = cached_property(lambda self: self.array("n_faces"))

    @property
    def chunk_done(self) -> np.ndarray:
        return self.array("chunk_done")

    @property
    def reasons(self) -> dict[int, str]:
        return {int(k): v for k, v in self.group.attrs.get("reasons", {}).items()}

    @property
    def template(self) -> np.ndarray:  # (5, 2) float32 crop pixels
        return np.asarray(self.group.attrs["template"], np.float32)

    @property
    def provenance(self) -> dict | None:
        return self.group.attrs.get("provenance")

    def read(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """(B, size, size, 3) uint8 crops of the given rows, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, self.size, self.size, 3), np.uint8)
        if rows.min() < 0 or rows.max() >= self.n_frames:
            raise IndexError(f"{self.path}: rows outside 0..{self.n_frames - 1}")
        uniq, inv = np.unique(rows, return_inverse=True)
        return self.group["crops"].oindex[uniq][inv]
