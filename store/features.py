"""The feature store: frozen-FAN features per frame in one Zarr v3 group, and its reader.

Layout (docs/architecture.md "Feature store"; numbers behind the choices in docs/features.md):

    features    float16 (N, C, H, W)   one frame per inner chunk, `frames_per_shard` per shard file
    valid       bool (N,)              features computed (a face was found)
    shard_done  bool (n_shards,)       completion record, set only after the shard's data is written
    shard_key   uint8 (n_shards, 64)   ASCII key of the inputs each done shard was made from
    attrs       provenance (dict; its `key` is set only once every shard is done with the keys the
                config gives), random_weights (bool), frames_per_shard, codec

A shard's key covers exactly what it is computed from: the content digests of its rows' crops
(`store.crops`), the features identity (backbone, weights, dtype, storage) and the code of the
per-frame computation, so labels never reach features, and one changed image redoes the one
shard that holds it. The store is created whole under a temporary name and renamed into place.

One frame per inner chunk makes a random frame cost one ~2.6 MB decode instead of a whole
multi-frame block; sharding keeps the number of files at N / frames_per_shard. `valid`,
`shard_done` and `shard_key` are chunked so that each shard owns its own chunks: workers in
different processes write different shards without read-modify-write races on shared chunks
(which is also why per-shard keys live in an array, not in the group attributes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

from pipeline.config import RunConfig
from pipeline.errors import MissingArtifact, StaleArtifact
from store import crops as crop_store
from store.catalog import Catalog
from store.codekey import code_key
from store.identity import features_identity
from store.provenance import atomic_dir, fingerprint

FEATURE_CHANNELS = 768  # F_l (256) + H1*A (256) + H2*A (256)
FEATURE_SIZE = 64  # 256x256 crop -> 64x64 feature map
KEY_BYTES = 64  # room for a fingerprint / sha256 hex digest per shard
REQUIRED = ("features", "valid", "shard_done", "shard_key")
CODE_ENTRY = "stages.features_compute"  # the per-frame computation: part of every shard key
CODECS = ("blosc-lz4", "blosc-zstd", "zstd", "none")
BLOSC_LEVEL = 5
ZSTD_LEVEL = 3
DASK_FRAMES = 8  # frames per dask chunk: 50 MB of float16, whatever the shard size


def _compressors(codec: str) -> Any:
    if codec == "blosc-lz4":
        # byte shuffle groups the float16 high/low bytes: 0.42 of raw at ~185 MB/s write
        return [BloscCodec(cname="lz4", clevel=BLOSC_LEVEL, shuffle=BloscShuffle.shuffle)]
    if codec == "blosc-zstd":
        return [BloscCodec(cname="zstd", clevel=BLOSC_LEVEL, shuffle=BloscShuffle.shuffle)]
    if codec == "zstd":
        return [ZstdCodec(level=ZSTD_LEVEL)]
    if codec == "none":
        return None
    raise ValueError(f"unknown feature codec {codec!r}; choose one of {CODECS}")


def _transpose(src: np.ndarray, dst: np.ndarray) -> None:
    """dst (n, m) = src (m, n).T for 2-byte or 4-byte elements, with OpenCV's blocked transpose."""
    as_int = {2: np.uint16, 4: np.uint32}[src.itemsize]  # cv2 moves bits; no float16 type there
    out = dst.view(as_int)
    res = cv2.transpose(src.view(as_int), dst=out)
    if res is not out:  # cv2 allocates instead when dst does not fit: never silently drop it
        raise RuntimeError(f"cv2.transpose did not write in place ({src.shape} -> {dst.shape})")


def _cast(src: np.ndarray, dst: np.ndarray) -> None:
    """dst[...] = src with torch's vectorised cast: numpy's float16 -> float32 is ~4-10x slower."""
    torch.from_numpy(dst).copy_(torch.from_numpy(np.ascontiguousarray(src)))


def n_shards_for(n_frames: int, frames_per_shard: int) -> int:
    return max(1, -(-int(n_frames) // int(frames_per_shard)))


def shard_range(shard_index: int, n_frames: int, frames_per_shard: int) -> tuple[int, int]:
    """[start, stop) rows of a shard; the last one may be short."""
    start = shard_index * frames_per_shard
    if shard_index < 0 or start >= max(n_frames, 1):
        raise IndexError(f"shard {shard_index} out of range for {n_frames} frames "
                         f"({frames_per_shard} per shard)")
    return start, min(start + frames_per_shard, n_frames)


def create_feature_store(path: str | Path, n_frames: int, *, channels: int = FEATURE_CHANNELS,
                         size: int = FEATURE_SIZE, dtype: str = "float16",
                         frames_per_shard: int = 32, codec: str = "blosc-lz4",
                         attrs: dict) -> zarr.Group:
    """Create (overwriting) an empty feature store; `attrs` should hold `provenance`."""
    if n_frames < 1:
        raise ValueError(f"a feature store needs at least one frame, got n_frames={n_frames}")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"feature dtype must be float16 or float32, got {dtype!r}")
    fps = int(frames_per_shard)
    n_shards = n_shards_for(n_frames, fps)
    compressors = _compressors(codec)
    with atomic_dir(Path(path)) as tmp:
        _build(tmp, n_frames, channels, size, dtype, fps, n_shards, compressors, codec, attrs)
    return zarr.open_group(str(path), mode="r+")


def _build(path: Path, n_frames: int, channels: int, size: int, dtype: str, fps: int,
           n_shards: int, compressors, codec: str, attrs: dict) -> None:
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    # the outer shard must divide evenly into inner chunks; the array's last shard may be partial
    group.create_array("features", shape=(n_frames, channels, size, size), dtype=dtype,
                       chunks=(1, channels, size, size), shards=(fps, channels, size, size),
                       compressors=compressors, fill_value=0)
    group.create_array("valid", shape=(n_frames,), dtype="bool", chunks=(fps,), fill_value=False)
    group.create_array("shard_done", shape=(n_shards,), dtype="bool", chunks=(1,),
                       fill_value=False)
    group.create_array("shard_key", shape=(n_shards, KEY_BYTES), dtype="uint8",
                       chunks=(1, KEY_BYTES), fill_value=0)
    meta = dict(attrs)
    meta.setdefault("provenance", {})
    meta.setdefault("random_weights", bool(meta["provenance"].get("random_weights", False)))
    meta.update(frames_per_shard=fps, codec=codec)
    group.attrs.update(meta)


def is_complete_layout(path: str | Path) -> bool:
    try:
        g = zarr.open_group(str(path), mode="r")
        return all(name in g for name in REQUIRED)
    except (FileNotFoundError, ValueError, KeyError, OSError):
        return False


def write_shard(group: zarr.Group, shard_index: int, features: np.ndarray,
                valid: np.ndarray) -> None:
    """Write one whole shard's features (n, C, H, W) and valid flags (n,); n = the shard's rows."""
    fps = int(group.attrs["frames_per_shard"])
    arr = group["features"]
    n_frames = arr.shape[0]
    start, stop = shard_range(shard_index, n_frames, fps)
    n = stop - start
    if features.shape != (n, *arr.shape[1:]):
        raise ValueError(f"shard {shard_index} (rows {start}..{stop - 1}) needs features of shape "
                         f"{(n, *arr.shape[1:])}, got {tuple(features.shape)}")
    if np.shape(valid) != (n,):
        raise ValueError(f"shard {shard_index} needs valid of shape ({n},), got {np.shape(valid)}")
    # One write per whole shard: zarr encodes the shard file once (no read-modify-write).
    # write_empty_chunks: zarr otherwise compares every inner chunk with the fill value to skip
    # empty ones, a float16 elementwise pass that cost 60-85% of the write here (31 -> 4 ms per
    # frame uncompressed, 32 -> 12 ms with blosc-lz4; docs/features.md). An all-zero frame (no
    # face) then costs one tiny compressed chunk, and `valid`, not chunk presence, marks it.
    arr = arr.with_config({"write_empty_chunks": True})
    group["shard_done"][shard_index] = False  # a rewrite in progress is not done
    arr[start:stop] = np.asarray(features, dtype=arr.dtype)
    group["valid"][start:stop] = np.asarray(valid, dtype=bool)


def mark_done(group: zarr.Group, shard_index: int, key: str) -> None:
    """Record a shard as complete; call only after write_shard returned."""
    raw = key.encode("ascii")
    if len(raw) > KEY_BYTES:
        raise ValueError(f"shard key longer than {KEY_BYTES} bytes: {key!r}")
    buf = np.zeros(KEY_BYTES, dtype=np.uint8)
    buf[:len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    group["shard_key"][shard_index] = buf  # key first, flag last: a flag never points at no key
    group["shard_done"][shard_index] = True


def done_shards(group: zarr.Group) -> dict[int, str]:
    """{shard index: key} of every shard marked done."""
    done = np.asarray(group["shard_done"][:])
    keys = np.asarray(group["shard_key"][:])
    return {int(i): bytes(keys[i]).rstrip(b"\0").decode("ascii") for i in np.flatnonzero(done)}


def shard_keys(digests: np.ndarray, frames_per_shard: int, common: dict) -> list[str]:
    """The key of every shard: its rows' crop digests (uint64 (N,)) and the common identity."""
    n = len(digests)
    base = fingerprint(common)
    return [fingerprint([base, np.asarray(digests[a:b], np.uint64).tobytes().hex()])
            for a, b in (shard_range(s, n, frames_per_shard)
                         for s in range(n_shards_for(n, frames_per_shard)))]


def expected_keys(cfg: RunConfig, catalog: Catalog, dataset: str | None = None) -> list[str]:
    """The shard keys this config gives for `dataset` (default: the config's), from its crop
    store's row digests (read-only); for a mixed run, its members' keys end to end."""
    from store import mix

    if mix.is_mix(cfg) and dataset in (None, cfg.dataset.name):
        return [k for m in mix.members(cfg) for k in expected_keys(m, Catalog(m.store))]
    crops_path = catalog.crops(cfg, dataset)
    if not crop_store.is_complete_layout(crops_path) or \
            not crop_store.CropStore(crops_path).chunk_done.all():
        raise StaleArtifact(f"crop store {crops_path} is missing or unfinished; run `aunet faces` "
                            "first")
    digests = crop_store.CropStore(crops_path).array("digest")
    common = {"identity": features_identity(cfg), "code": code_key(CODE_ENTRY)}
    return shard_keys(digests, cfg.features.frames_per_shard, common)


def checked(cfg: RunConfig, catalog: Catalog, dataset: str | None = None) -> "FeatureStore":
    """The feature store this config asks for, verified complete and current (else raises);
    for a mixed run, its members' stores read as one (store.mix.MixedFeatureStore)."""
    from store import manifests, mix

    if mix.is_mix(cfg) and dataset in (None, cfg.dataset.name):
        ms = mix.members(cfg)
        stores = [checked(m, Catalog(m.store)) for m in ms]
        t = manifests.load(catalog, cfg.dataset.name, [mix.MEMBER, mix.MEMBER_ROW]).to_pandas()
        index = t[mix.MEMBER].map({m.dataset.name: i for i, m in enumerate(ms)}).to_numpy()
        return mix.MixedFeatureStore(stores, index, t[mix.MEMBER_ROW].to_numpy())
    path = catalog.features(cfg, dataset)
    verify(path, expected_keys(cfg, catalog, dataset))
    return FeatureStore(path)


def store_key(keys: list[str]) -> str:
    return fingerprint(list(keys))


def complete_with(group: zarr.Group, keys: list[str]) -> bool:
    """Every shard done with exactly these keys."""
    done = done_shards(group)
    return len(done) == len(keys) and all(done.get(i) == k for i, k in enumerate(keys))


def verify(path: str | Path, keys: list[str]) -> dict:
    """The provenance of a complete feature store made from exactly `keys` (one per shard);
    MissingArtifact or StaleArtifact (saying what to run) otherwise."""
    path = Path(path)
    if not path.exists():
        raise MissingArtifact(f"no feature store at {path}; run `aunet features` first")
    if not is_complete_layout(path):
        raise StaleArtifact(f"{path} is not a complete feature store; run `aunet features`")
    g = zarr.open_group(str(path), mode="r")
    rec = dict(g.attrs.get("provenance") or {})
    if rec.get("key") != store_key(keys) or not complete_with(g, keys):
        n_done = len(done_shards(g))
        raise StaleArtifact(f"feature store {path} is incomplete ({n_done} of {len(keys)} shards "
                            "done) or was computed from other crops, weights or code than this "
                            "config's; run `aunet features` first")
    return rec


class FeatureStore:
    """Read-only access to a feature store; picklable (reopens lazily in each process)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise MissingArtifact(f"no feature store at {self.path}; run `aunet features` first")
        self._open()

    def _open(self) -> None:
        self._group = zarr.open_group(str(self.path), mode="r")
        try:
            self._features = self._group["features"]
            self._valid_arr = self._group["valid"]
        except KeyError as e:
            raise StaleArtifact(f"{self.path} is not a complete feature store (missing array {e}); "
                                "run `aunet features`") from None
        self._valid: np.ndarray | None = None

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
    def dtype(self) -> np.dtype:
        return np.dtype(str(self._features.dtype))  # as stored (float16 by default)

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
        callers that cast later). channels_last: return a (B, C, H, W) view of (B, H, W, C)
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
        else:
            out = view = np.empty((rows.size, c, h, w), dtype=out_dtype)  # (B, C, H, W)
        # one inner chunk (= one frame) per read, in sorted row order, each row decoded once.
        # Measured with zarr 3.1.6 (docs/features.md): orthogonal selection on a sharded array
        # decodes far more than it needs (~2 frames/s, GBs of memory); per-frame reads give
        # ~110 frames/s holding one frame, and neither threads nor asyncio.gather beat them here.
        last_row, last_pos = -1, -1
        for pos in np.argsort(rows, kind="stable"):
            r = int(rows[pos])
            if r == last_row:
                out[pos] = out[last_pos]  # duplicate: copy, no second decode
                continue
            frame = self._features[r]  # (C, H, W) as stored
            if channels_last:
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
        return view

    def dask(self):
        """dask array (N, C, H, W) over the features (stored dtype), DASK_FRAMES per chunk.

        Sharded zarr reads just the inner chunks a dask chunk needs, so dask chunks smaller than
        a shard keep statistics' memory bounded by threads x DASK_FRAMES frames.
        """
        import dask.array as da

        frames = min(DASK_FRAMES, self.frames_per_shard)
        return da.from_array(self._features, chunks=(frames, *self.shape),
                             name=f"features-{self.path}", inline_array=True)

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, n_frames={self.n_frames}, shape={self.shape}, "
                f"random_weights={self.random_weights})")
