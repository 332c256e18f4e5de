"""The feature store's layout and writer: frozen-FAN features per frame in one Zarr v3 group.

Layout (docs/architecture.md "Feature store"; numbers behind the choices in docs/features.md):

    features    float16 (N, C, H, W)   one frame per inner chunk, `frames_per_shard` per shard file
                (or float32, or uint8 codes with scale and offset float32 (N, C): pipeline.quantise)
    valid       bool (N,)              features computed (a face was found)
    shard_done  bool (n_shards,)       completion record, set only after the shard's data is written
    shard_key   uint8 (n_shards, 64)   ASCII key of the inputs each done shard was made from
    shard_bytes int64 (n_shards,)      size of each done shard's file when it was written
    attrs       provenance (dict; its `key` is set only once every shard is done with the keys the
                config gives), random_weights (bool), frames_per_shard, codec

Damage is noticed (`damaged_shards`): every inner chunk ends in a crc32c (zarr 3's Crc32cCodec,
checked by zarr on every decode; the shard index has its own), and a done shard's file must be
on disk with the size recorded when it was written (a stat per shard: cheap enough for every
check); `deep=True` also decodes every chunk, checking checksums and finiteness.

A shard's key covers exactly what it is computed from: the content digests of its rows' crops
(`store.crops`), the features identity (backbone, weights, dtype, storage) and the code of the
per-frame computation, so labels never reach features, and one changed image redoes the one
shard that holds it. The store is created whole under a temporary name and renamed into place
(on an object store: built locally and uploaded with its root zarr.json last, store.location).

One frame per inner chunk makes a random frame cost one ~2.6 MB decode instead of a whole
multi-frame block; sharding keeps the number of files at N / frames_per_shard. `valid`,
`shard_done` and `shard_key` are chunked so that each shard owns its own chunks: workers in
different processes write different shards without read-modify-write races on shared chunks
(which is also why per-shard keys live in an array, not in the group attributes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec

from pipeline.errors import InputError
from pipeline.quantise import quantise
from store import location
from store.provenance import atomic_dir

FEATURE_CHANNELS = 768  # F_l (256) + H1*A (256) + H2*A (256)
FEATURE_SIZE = 64  # 256x256 crop -> 64x64 feature map
KEY_BYTES = 64  # room for a fingerprint / sha256 hex digest per shard
REQUIRED = ("features", "valid", "shard_done", "shard_key", "shard_bytes")
QUANT = ("scale", "offset")  # (N, C) float32 each, uint8 stores only
DTYPES = ("float16", "float32", "uint8")
CODECS = ("blosc-lz4", "blosc-zstd", "zstd", "none")
BLOSC_LEVEL = 5
ZSTD_LEVEL = 3


def _compressors(codec: str) -> Any:
    """The codec's bytes-to-bytes stage, then a crc32c of the result (checked on every read)."""
    return [*(_compressor(codec) or []), Crc32cCodec()]


def _compressor(codec: str) -> Any:
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
    dtype = getattr(dtype, "value", dtype)  # a FeatureDtype or its name
    if dtype not in DTYPES:
        raise ValueError(f"feature dtype must be one of {DTYPES}, got {dtype!r}")
    fps = int(frames_per_shard)
    n_shards = n_shards_for(n_frames, fps)
    compressors = _compressors(codec)
    with atomic_dir(location.as_path(path)) as tmp:
        _build(tmp, n_frames, channels, size, dtype, fps, n_shards, compressors, codec, attrs)
    return location.open_group(path, "r+")


def _build(path: Path, n_frames: int, channels: int, size: int, dtype: str, fps: int,
           n_shards: int, compressors, codec: str, attrs: dict) -> None:
    group = location.open_group(path, "w")
    # the outer shard must divide evenly into inner chunks; the array's last shard may be partial
    group.create_array("features", shape=(n_frames, channels, size, size), dtype=dtype,
                       chunks=(1, channels, size, size), shards=(fps, channels, size, size),
                       compressors=compressors, fill_value=0)
    group.create_array("valid", shape=(n_frames,), dtype="bool", chunks=(fps,), fill_value=False)
    if dtype == "uint8":  # x = q * scale + offset per frame and channel, one chunk per shard
        for name in QUANT:
            group.create_array(name, shape=(n_frames, channels), dtype="float32",
                               chunks=(fps, channels), compressors=[Crc32cCodec()],
                               fill_value=0)
    group.create_array("shard_done", shape=(n_shards,), dtype="bool", chunks=(1,),
                       fill_value=False)
    group.create_array("shard_key", shape=(n_shards, KEY_BYTES), dtype="uint8",
                       chunks=(1, KEY_BYTES), fill_value=0)
    group.create_array("shard_bytes", shape=(n_shards,), dtype="int64", chunks=(1,),
                       fill_value=-1)
    meta = dict(attrs)
    meta.setdefault("provenance", {})
    meta.setdefault("random_weights", bool(meta["provenance"].get("random_weights", False)))
    meta.update(frames_per_shard=fps, codec=codec)
    group.attrs.update(meta)


def is_complete_layout(path: str | Path) -> bool:
    try:
        g = location.open_group(path, "r")
        return all(name in g for name in REQUIRED)
    except (FileNotFoundError, ValueError, KeyError, OSError):
        return False


def write_shard(group: zarr.Group, shard_index: int, features: np.ndarray,
                valid: np.ndarray, scale: np.ndarray | None = None,
                offset: np.ndarray | None = None) -> None:
    """Write one whole shard's features (n, C, H, W) and valid flags (n,); n = the shard's rows.

    A uint8 store takes uint8 codes with their scale and offset (n, C) (pipeline.quantise, as
    the features stage makes them), or float features, quantised here."""
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
    # the whole shard is replaced: zarr would otherwise read the old file's index first (and
    # fail on a damaged one)
    shard_file(root_of(group), shard_index).unlink(missing_ok=True)
    quant = "scale" in group
    if quant and features.dtype != np.uint8:
        _check_finite(np.asarray(features), start, shard_index)
        q, sc, off = quantise(torch.from_numpy(np.ascontiguousarray(features)))
        features, scale, offset = q.numpy(), sc.numpy(), off.numpy()
    features = np.asarray(features, dtype=arr.dtype)
    _check_finite(features, start, shard_index)
    if quant:
        if scale is None or offset is None or np.shape(scale) != (n, arr.shape[1]) \
                or np.shape(offset) != np.shape(scale):
            raise ValueError(f"shard {shard_index} of a uint8 store needs scale and offset of "
                             f"shape {(n, arr.shape[1])}")
        for name, v in zip(QUANT, (scale, offset)):
            v = np.asarray(v, np.float32)
            _check_finite(v, start, shard_index)
            group[name].with_config({"write_empty_chunks": True})[start:stop] = v
    arr[start:stop] = features
    # written even when all False, so that a missing file is damage, never "no faces"
    group["valid"].with_config({"write_empty_chunks": True})[start:stop] = np.asarray(valid, bool)


def _check_finite(features: np.ndarray, start: int, shard_index: int) -> None:
    """Refuse NaN/Inf before anything of the shard is written (two reductions; a mask on failure)."""
    if not np.issubdtype(features.dtype, np.floating):
        return
    t = torch.from_numpy(features)
    if t.numel() == 0 or (torch.isfinite(t.amax()) and torch.isfinite(t.amin())):
        return
    bad = start + np.flatnonzero(~torch.isfinite(t).reshape(len(t), -1).all(dim=1).numpy())
    raise InputError(f"NaN/Inf in features for rows {bad[:10].tolist()} (shard {shard_index}); "
                     "nothing of the shard was written")


def mark_done(group: zarr.Group, shard_index: int, key: str) -> None:
    """Record a shard as complete; call only after write_shard returned."""
    raw = key.encode("ascii")
    if len(raw) > KEY_BYTES:
        raise ValueError(f"shard key longer than {KEY_BYTES} bytes: {key!r}")
    buf = np.zeros(KEY_BYTES, dtype=np.uint8)
    buf[:len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    group["shard_key"][shard_index] = buf  # key first, flag last: a flag never points at no key
    group["shard_bytes"][shard_index] = shard_file(root_of(group), shard_index).stat().st_size
    group["shard_done"][shard_index] = True


def root_of(group: zarr.Group) -> Path:
    """The folder (or, on an object store, the prefix) of a feature store group."""
    return location.group_root(group)


def shard_file(root: Path, shard_index: int) -> Path:
    """The file of one shard of `features` (zarr v3's default chunk keys: c/i/0/0/0)."""
    return location.as_path(root) / "features" / "c" / str(int(shard_index)) / "0" / "0" / "0"


def damaged_shards(group: zarr.Group, deep: bool = False) -> dict[int, str]:
    """{shard: what is wrong} for each shard marked done whose data is not what was written.

    Always: its features file and valid-flags file are on disk, and the features file has the
    size recorded by mark_done (one stat each). deep: also decode every chunk of the shard
    (zarr checks each crc32c) and check the values are finite: reads the whole store.
    """
    root = root_of(group)
    done = np.flatnonzero(np.asarray(group["shard_done"][:]))
    sizes = np.asarray(group["shard_bytes"][:])
    arr, n, fps = group["features"], group["features"].shape[0], int(group.attrs["frames_per_shard"])
    bad = {}
    for s in done.tolist():
        f = shard_file(root, s)
        if not f.is_file():
            bad[s] = f"file {f.relative_to(root)} missing"
        elif f.stat().st_size != sizes[s]:
            bad[s] = f"file {f.relative_to(root)} is {f.stat().st_size} bytes, {sizes[s]} written"
        elif not (root / "valid" / "c" / str(s)).is_file():
            bad[s] = f"file valid/c/{s} missing"
        elif "scale" in group and not all((root / q / "c" / str(s) / "0").is_file() for q in QUANT):
            bad[s] = f"file scale/c/{s}/0 or offset/c/{s}/0 missing"
        elif deep:
            a, b = shard_range(s, n, fps)
            try:
                for x in [arr] + [group[q] for q in QUANT if q in group]:
                    _check_finite(np.asarray(x[a:b]), a, s)
            except ValueError as e:  # zarr's checksum mismatch, or InputError (NaN/Inf)
                bad[s] = f"file {f.relative_to(root)}: {e}"
    return bad


def done_shards(group: zarr.Group) -> dict[int, str]:
    """{shard index: key} of every shard marked done."""
    done = np.asarray(group["shard_done"][:])
    keys = np.asarray(group["shard_key"][:])
    return {int(i): bytes(keys[i]).rstrip(b"\0").decode("ascii") for i in np.flatnonzero(done)}


