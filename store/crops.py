"""The crop store: aligned faces and their per-frame records in one Zarr v3 group.

Arrays are indexed by manifest `row` and chunked by blocks of `chunk_frames` rows along the first
axis, so one unit of work (one block) writes its own chunk files and no other unit's. Per block,
`chunk_key` (the block's input fingerprint as uint64) and `chunk_done` are written *after* the
block's data; a killed run therefore leaves at worst a block whose flag is unset, which is
recomputed. `chunk_key` and `chunk_done` are chunked one block per file for the same reason
(concurrent units never rewrite a shared file). The group attributes hold `template`, `reasons`,
and, written once at the end of a run, `provenance` and `chunk_keys` (hex copies).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import zarr

N_KP = 5
KEY_NONE = 0  # chunk_key of a block never written


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
    }


def n_chunks(n_frames: int, chunk_frames: int) -> int:
    return -(-n_frames // chunk_frames)


def key_to_int(key: str) -> int:
    """A 16-hex-digit fingerprint as the uint64 stored in `chunk_key`."""
    return int(key, 16)


def prepare(path: Path, *, n_frames: int, chunk_frames: int, size: int, attrs: dict) -> zarr.Group:
    """Create the group, or open it and resize its arrays to `n_frames` rows (blocks already
    written keep their data and keys; resume decides per block whether they still hold)."""
    path = Path(path)
    n_blk = n_chunks(n_frames, chunk_frames)
    if (path / "zarr.json").exists():
        g = zarr.open_group(path, mode="r+")
        have = g["crops"]
        if have.chunks[0] != chunk_frames or have.shape[1:] != (size, size, 3):
            raise ValueError(f"{path}: crop store made with chunk_frames={have.chunks[0]}, "
                             f"size={have.shape[1]}; delete it or use a new store")
        if have.shape[0] != n_frames:
            for name, (_, shape, _) in _specs(size).items():
                g[name].resize((n_frames, *shape))
            g["chunk_done"].resize((n_blk,))
            g["chunk_key"].resize((n_blk,))
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        g = zarr.open_group(path, mode="w")
        for name, (dtype, shape, fill) in _specs(size).items():
            g.create_array(name, shape=(n_frames, *shape), chunks=(chunk_frames, *shape),
                           dtype=dtype, fill_value=fill)
        g.create_array("chunk_done", shape=(n_blk,), chunks=(1,), dtype="bool", fill_value=False)
        g.create_array("chunk_key", shape=(n_blk,), chunks=(1,), dtype="uint64", fill_value=KEY_NONE)
    if any(g.attrs.get(k) != v for k, v in attrs.items()):  # a skipped rerun writes nothing
        g.attrs.update(attrs)
    return g


def chunk_state(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(done bool (n_chunks,), key uint64 (n_chunks,))."""
    g = zarr.open_group(Path(path), mode="r")
    return g["chunk_done"][:], g["chunk_key"][:]


def write_chunk(path: Path, chunk: int, start: int, data: dict[str, np.ndarray], key: str) -> None:
    """Write one block's arrays, then its key, then its done flag (in that order)."""
    g = zarr.open_group(Path(path), mode="r+")
    g["chunk_done"][chunk] = False  # a rewrite in progress is not done
    n = len(data["success"])
    for name in _specs(g["crops"].shape[1]):
        g[name][start:start + n] = data[name]
    g["chunk_key"][chunk] = np.uint64(key_to_int(key))
    g["chunk_done"][chunk] = True


def finalize(path: Path, provenance: dict) -> None:
    """Record provenance and the hex chunk keys in the group attributes (one writer, at the end)."""
    g = zarr.open_group(Path(path), mode="r+")
    keys = [f"{int(k):016x}" if d else None for d, k in zip(*chunk_state(path))]
    old_key = (g.attrs.get("provenance") or {}).get("key")
    # a skipped rerun (same key, same chunks) writes nothing, not even a new timestamp
    if old_key != provenance.get("key") or g.attrs.get("chunk_keys") != keys:
        g.attrs.update({"provenance": provenance, "chunk_keys": keys})


def crop_store_key(path: Path) -> str:
    """The store's provenance key: the input fingerprint a later stage (features) records.

    "missing" for a store that does not exist or was never finished by a run.
    """
    path = Path(path)
    if not (path / "zarr.json").exists():
        return "missing"
    rec = zarr.open_group(path, mode="r").attrs.get("provenance")
    return rec["key"] if rec else "missing"


@dataclass
class CropStore:
    """Reader: per-frame records as NumPy arrays, crops on demand.

    `read(rows)` -> uint8 (B, size, size, 3) RGB; rows with `success` False are zeros.
    """
    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not (self.path / "zarr.json").exists():
            raise FileNotFoundError(f"no crop store at {self.path}; run `aunet faces` first")
        self.group = zarr.open_group(self.path, mode="r")

    @property
    def n_frames(self) -> int:
        return int(self.group["crops"].shape[0])

    @property
    def size(self) -> int:
        return int(self.group["crops"].shape[1])

    def _all(self, name: str) -> np.ndarray:
        return self.group[name][:]

    @cached_property
    def success(self) -> np.ndarray:  # (N,) bool
        return self._all("success")

    @cached_property
    def reason(self) -> np.ndarray:  # (N,) uint8
        return self._all("reason")

    @cached_property
    def boxes(self) -> np.ndarray:  # (N, 4) float32
        return self._all("boxes")

    @cached_property
    def keypoints(self) -> np.ndarray:  # (N, 5, 2) float32
        return self._all("keypoints")

    @cached_property
    def scores(self) -> np.ndarray:  # (N,) float32
        return self._all("scores")

    @cached_property
    def n_faces(self) -> np.ndarray:  # (N,) int16
        return self._all("n_faces")

    @property
    def chunk_done(self) -> np.ndarray:
        return self._all("chunk_done")

    @property
    def complete(self) -> bool:
        return bool(self.chunk_done.all())

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

    def dask(self):
        """The crops as a lazy dask array (N, size, size, 3), one dask chunk per Zarr chunk."""
        import dask.array as da

        return da.from_zarr(self.group["crops"])
