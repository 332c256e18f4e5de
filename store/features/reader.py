"""The feature store's reader: frames by row, in the stored or a float dtype, either layout."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.errors import MissingArtifact, StaleArtifact
from pipeline.quantise import dequantise_np
from store import location

DASK_FRAMES = 8  # frames per dask chunk: 50 MB of float16, whatever the shard size


def _transpose(src: np.ndarray, dst: np.ndarray) -> None:
    """dst (n, m) = src (m, n).T for 1-, 2- or 4-byte elements, with OpenCV's blocked transpose."""
    as_int = {1: np.uint8, 2: np.uint16, 4: np.uint32}[src.itemsize]  # cv2 moves bits; no float16 type there
    out = dst.view(as_int)
    res = cv2.transpose(src.view(as_int), dst=out)
    if res is not out:  # cv2 allocates instead when dst does not fit: never silently drop it
        raise RuntimeError(f"cv2.transpose did not write in place ({src.shape} -> {dst.shape})")


def _cast(src: np.ndarray, dst: np.ndarray) -> None:
    """dst[...] = src with torch's vectorised cast: numpy's float16 -> float32 is ~4-10x slower."""
    torch.from_numpy(dst).copy_(torch.from_numpy(np.ascontiguousarray(src)))



class FeatureStore:
    """Read-only access to a feature store; picklable (reopens lazily in each process)."""

    def __init__(self, path: str | Path):
        self.path = location.as_path(path)
        if not (self.path / "zarr.json").exists():
            raise MissingArtifact(f"no feature store at {self.path}; run `aunet features` first")
        self._open()

    def _open(self) -> None:
        self._group = location.open_group(self.path, "r")
        try:
            self._features = self._group["features"]
            self._valid_arr = self._group["valid"]
        except KeyError as e:
            raise StaleArtifact(f"{self.path} is not a complete feature store (missing array {e}); "
                                "run `aunet features`") from None
        self._valid: np.ndarray | None = None
        self._quant = "scale" in self._group  # uint8 codes with per frame, channel scale/offset

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._open()

    @property
    def n_frames(self) -> int:
        return int(self._features.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self._features.shape[1:])  # (C, H, W)

    @property
    def stored_dtype(self) -> np.dtype:
        return np.dtype(str(self._features.dtype))  # float16 (default), float32 or uint8

    @property
    def dtype(self) -> np.dtype:
        """What read(dtype=None) gives: the stored dtype, float16 for a uint8 store."""
        return np.dtype(np.float16) if self._quant else self.stored_dtype

    @property
    def frames_per_shard(self) -> int:
        return int(self._group.attrs["frames_per_shard"])

    @property
    def valid(self) -> np.ndarray:
        if self._valid is None:
            self._valid = np.asarray(self._valid_arr[:], dtype=bool)  # (N,)
        return self._valid

    @property
    def provenance(self) -> dict:
        return dict(self._group.attrs.get("provenance", {}))

    @property
    def random_weights(self) -> bool:
        return bool(self._group.attrs.get("random_weights",
                                          self.provenance.get("random_weights", False)))

    def shard_of(self, row: int) -> int:
        return int(row) // self.frames_per_shard

    def shard_ids(self, rows: np.ndarray) -> np.ndarray:
        """(n,) the shard of each row (training reads batches shard by shard)."""
        return np.asarray(rows, np.int64) // self.frames_per_shard

    def read(self, rows: np.ndarray, dtype: np.dtype | str | None = np.float32,
             channels_last: bool = False) -> np.ndarray:
        """Features of `rows` (any order, duplicates allowed) as (B, C, H, W).

        dtype: float32 by default; None keeps the stored dtype (float16: half the memory, for
        callers that cast later; a uint8 store's codes are dequantised, on the caller's thread,
        to float16 or `dtype`). channels_last: return a (B, C, H, W) view of (B, H, W, C)
        memory, the order the heads train fastest in (torch.from_numpy keeps it); the store
        keeps (C, H, W) order because it compresses far better (docs/features.md).
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        c, h, w = self.shape
        out_dtype = self.dtype if dtype is None else np.dtype(dtype)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_frames):
            bad = rows[(rows < 0) | (rows >= self.n_frames)]
            raise IndexError(f"rows {bad[:10].tolist()} out of range for {self.n_frames} frames "
                             f"in {self.path}")
        if channels_last:
            out = np.empty((rows.size, h, w, c), dtype=out_dtype)  # (B, H, W, C)
            view = out.transpose(0, 3, 1, 2)
            tmp = np.empty((h, w, c), dtype=self.dtype) if out_dtype != self.dtype else None
            if self._quant:
                tmp = np.empty((h, w, c), dtype=np.uint8)
        else:
            out = view = np.empty((rows.size, c, h, w), dtype=out_dtype)  # (B, C, H, W)
        scratch = np.empty((c, h * w), np.float32) if self._quant else None  # dequantised frame
        # one inner chunk (= one frame) per read, in sorted row order, each row decoded once.
        # Measured with zarr 3.1.6 (docs/features.md): orthogonal selection on a sharded array
        # decodes far more than it needs (~2 frames/s, GBs of memory); per-frame reads give
        # ~110 frames/s holding one frame, and neither threads nor asyncio.gather beat them here.
        last_row, last_pos = -1, -1
        blocks: dict = {}  # uint8 stores: this call's scale/offset blocks (no shared state)
        for pos in np.argsort(rows, kind="stable"):
            r = int(rows[pos])
            if r == last_row:
                out[pos] = out[last_pos]  # duplicate: copy, no second decode
                continue
            frame = self._frame(r)  # (C, H, W) as stored
            if self._quant:
                scale, offset = self._quant_of(r, blocks)  # (C,) each
                if channels_last:
                    _transpose(frame.reshape(c, h * w), tmp.reshape(h * w, c))
                    dequantise_np(tmp.reshape(h * w, c), scale, offset,
                                  out[pos].reshape(h * w, c), True, scratch.reshape(h * w, c))
                else:
                    dequantise_np(frame.reshape(c, h * w), scale, offset,
                                  out[pos].reshape(c, h * w), False, scratch)
            elif channels_last:
                # OpenCV's blocked transpose: 1.6 ms per frame, where numpy's and torch's
                # strided copies take ~10 (single thread); it also runs without the GIL
                dst = out[pos] if tmp is None else tmp
                _transpose(frame.reshape(c, h * w), dst.reshape(h * w, c))
                if tmp is not None:
                    _cast(tmp, out[pos])
            elif frame.dtype != out_dtype:
                _cast(frame, out[pos])
            else:
                out[pos] = frame
            last_row, last_pos = r, pos
        self._check_finite(view, rows)
        return view

    def _quant_of(self, row: int, blocks: dict) -> tuple[np.ndarray, np.ndarray]:
        """(scale (C,), offset (C,)) of a uint8 store's row; each shard's (fps, C) blocks read
        once per call and kept in `blocks` (the caller's: reader threads share nothing)."""
        s = self.shard_of(row)
        if blocks.get("shard") != s:
            a = s * self.frames_per_shard
            b = min(a + self.frames_per_shard, self.n_frames)
            try:
                blocks["scale"], blocks["offset"] = (np.asarray(self._group[q][a:b], np.float32)
                                                     for q in ("scale", "offset"))
            except ValueError as e:
                raise self._damaged(row, e) from None
            blocks["shard"] = s
        i = row - s * self.frames_per_shard
        return blocks["scale"][i], blocks["offset"][i]

    def _damaged(self, row: int, e: ValueError) -> Exception:
        if "checksum" not in str(e):
            return e
        return StaleArtifact(f"feature store {self.path}: frame {row} (shard {self.shard_of(row)})"
                             " fails its checksum, the shard file is damaged; run `aunet "
                             "features --verify` to recompute it")

    def _frame(self, row: int) -> np.ndarray:
        """One frame as stored; a chunk whose checksum fails is a one-line StaleArtifact."""
        try:
            return self._features[row]
        except ValueError as e:
            raise self._damaged(row, e) from None

    def _check_finite(self, view: np.ndarray, rows: np.ndarray) -> None:
        """NaN/Inf in what is handed out is refused, naming the rows (two reductions per batch)."""
        t = torch.from_numpy(view)
        if t.numel() == 0 or (torch.isfinite(t.amax()) and torch.isfinite(t.amin())):
            return
        bad = rows[~torch.isfinite(t).flatten(1).all(dim=1).numpy()]
        raise StaleArtifact(f"feature store {self.path}: rows {bad[:10].tolist()} hold NaN/Inf; "
                            "run `aunet features --verify` to recompute their shards")

    def dask(self):
        """dask array (N, C, H, W) over the features (stored dtype; a uint8 store's dequantised
        to float16), DASK_FRAMES per chunk.

        Sharded zarr reads just the inner chunks a dask chunk needs, so dask chunks smaller than
        a shard keep statistics' memory bounded by threads x DASK_FRAMES frames.
        """
        import dask.array as da

        frames = min(DASK_FRAMES, self.frames_per_shard)
        arr = da.from_array(self._features, chunks=(frames, *self.shape),
                            name=f"features-{self.path}", inline_array=True)
        if not self._quant:
            return arr
        scale, offset = (da.from_array(self._group[q], chunks=(frames, self.shape[0]),
                                       inline_array=True)[:, :, None, None]
                         for q in ("scale", "offset"))
        return (arr.astype(np.float32) * scale + offset).astype(np.float16)

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, n_frames={self.n_frames}, shape={self.shape}, "
                f"random_weights={self.random_weights})")
