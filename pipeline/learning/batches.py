"""Training batches with chunk locality, read in a background thread.

Feature stores keep `frames_per_shard` frames per shard file, so a fully random permutation
would touch a new shard for nearly every frame. Instead the shard order is shuffled, each
shard's samples are streamed through a shuffle buffer, and batches are popped at random from
that buffer: every shard is opened about once per epoch while batches still mix many shards.
Loading runs in a thread (numpy / zarr decoding releases the GIL), so reading overlaps compute.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

_DONE = object()


def chunk_local_batches(shards: np.ndarray, batch_size: int, buffer: int,
                        rng: np.random.Generator, min_batch: int = 2) -> Iterator[np.ndarray]:
    """Yield batches of sample indices (into `shards`) in chunk-local shuffled order.

    shards: (n,) shard number of each sample. Every sample appears exactly once per pass;
    a last batch smaller than `min_batch` is dropped (BatchNorm needs two rows in training).
    """
    shards = np.asarray(shards)
    order = rng.permutation(np.unique(shards))
    buffer = max(buffer, batch_size)
    pool: list[int] = []
    batch: list[int] = []
    by_shard = {s: np.flatnonzero(shards == s) for s in order}
    for s in order:
        for i in rng.permutation(by_shard[s]):
            pool.append(int(i))
            if len(pool) >= buffer:
                j = int(rng.integers(len(pool)))
                pool[j], pool[-1] = pool[-1], pool[j]
                batch.append(pool.pop())
                if len(batch) == batch_size:
                    yield np.asarray(batch, dtype=np.int64)
                    batch = []
    for j in rng.permutation(len(pool)):
        batch.append(pool[j])
        if len(batch) == batch_size:
            yield np.asarray(batch, dtype=np.int64)
            batch = []
    if len(batch) >= min_batch:
        yield np.asarray(batch, dtype=np.int64)


def epoch_samples(groups: np.ndarray, shares: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One epoch's sample indices when groups (a mixed run's datasets) have set shares.

    groups (n,) group of each sample, shares (G,) >= 0. The epoch keeps n samples: group g gets
    round(n * share_g / sum) of them, drawn without replacement while it has enough samples and
    with replacement beyond that (a small dataset weighted up is repeated, a big one weighted down
    is subsampled afresh each epoch). Returns indices (unordered; batches come chunk-local)."""
    groups, shares = np.asarray(groups), np.asarray(shares, np.float64)
    n = len(groups)
    want = np.floor(n * shares / shares.sum()).astype(int)
    want[np.argmax(shares)] += n - want.sum()  # rounding: the largest share takes the rest
    out = []
    for g, k in enumerate(want):
        members = np.flatnonzero(groups == g)
        if k == 0 or members.size == 0:
            continue
        take = rng.permutation(members)[:k]
        if k > members.size:
            take = np.concatenate([take, rng.choice(members, k - members.size, replace=True)])
        out.append(take)
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ascending unique rows (U,), index (*rows.shape) of each entry into them): read each once."""
    rows = np.asarray(rows)
    uniq, inverse = np.unique(rows.ravel(), return_inverse=True)
    return uniq, inverse.reshape(rows.shape)


def read_unique(store, rows: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Each distinct frame of `rows` read once: (frames (U, C, H, W) as stored, float16, in
    channels-last memory; index (*rows.shape) into them), what gather_shifted takes.

    store: a FeatureStore. No torch work happens here (zarr, blosc and OpenCV only), so a
    background loader thread can call it without starting a second OpenMP team.
    """
    uniq, index = unique_rows(rows)
    return torch.from_numpy(store.read(uniq, dtype=None, channels_last=True)), index


def _shift_slices(d: int, size: int) -> tuple[slice, slice, slice | None]:
    """(destination, source, uncovered destination strip) of a shift by d cells: out[y] = x[y - d]."""
    dst = slice(max(d, 0), size + min(d, 0))
    src = slice(max(-d, 0), size - max(d, 0))
    strip = slice(0, d) if d > 0 else (slice(size + d, size) if d < 0 else None)
    return dst, src, strip


def batch_buffer(slots: int, batch: int, c: int, h: int, w: int) -> torch.Tensor:
    """An empty float32 batch (S, B, C, H, W) in channels-last memory, (S, B, H, W, C)."""
    return torch.empty((slots, batch, h, w, c), dtype=torch.float32).permute(0, 1, 4, 2, 3)


def gather_shifted(frames: torch.Tensor, index: np.ndarray, max_shift: int = 0,
                   rng: np.random.Generator | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """A training batch (S, B, C, H, W) float32, channels last, from frames (U, C, H, W).

    Slot j of sample i is frames[index[i, j]] (index (B, S); S = 1, or 3 for t-T, t, t+T),
    shifted by up to `max_shift` cells (zero filled) with one random offset per sample: the S
    frames of a sample share it, so temporal differences are not polluted by the augmentation.
    One copy per frame does the gather, the shift, the cast (frames may be float16) and the
    layout (the heads train 36% faster channels last on CPU); each slot, x[j], is contiguous in
    channels-last order, so the heads' first convolutions need no copy of their own. Fastest with
    channels-last frames (FeatureStore.read(..., channels_last=True)): the copy is then a cast,
    not a transpose. out: a batch_buffer with room for B samples to fill and return a view of;
    reusing one across steps spares the page faults of a fresh allocation, which cost 6x the copy
    itself here (3.7 vs 0.6 ms per frame).
    """
    index = np.asarray(index)
    b, s = index.shape
    _, c, h, w = frames.shape
    if out is None:
        out = batch_buffer(s, b, c, h, w)  # (S, B, C, H, W)
    else:
        if out.shape[0] != s or out.shape[1] < b or tuple(out.shape[2:]) != (c, h, w):
            raise ValueError(f"batch buffer {tuple(out.shape)} cannot hold ({s}, {b}, {c}, {h}, {w})")
        out = out[:, :b]
    m = max(int(max_shift), 0)
    if m and rng is None:
        raise ValueError("gather_shifted: a random shift needs rng")
    offsets = rng.integers(-m, m + 1, size=(b, 2)) if m > 0 else np.zeros((b, 2), dtype=np.int64)
    for i, (dy, dx) in enumerate(offsets):
        ydst, ysrc, ystrip = _shift_slices(int(dy), h)
        xdst, xsrc, xstrip = _shift_slices(int(dx), w)
        for j in range(s):
            dst = out[j, i]  # (C, H, W) view
            if ystrip is not None:
                dst[:, ystrip, :].zero_()
            if xstrip is not None:
                dst[:, :, xstrip].zero_()
            dst[:, ydst, xdst].copy_(frames[int(index[i, j]), :, ysrc, xsrc])
    return out


class BackgroundLoader:
    """Iterate `load(batch)` over `batches`, computed `depth` batches ahead in one thread."""

    def __init__(self, batches: Iterable[np.ndarray], load: Callable[[np.ndarray], object],
                 depth: int = 2):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(batches, load), daemon=True)
        self._thread.start()

    def _work(self, batches, load) -> None:
        try:
            for b in batches:
                if self._stop.is_set():
                    return
                self._put(load(b))
        except BaseException as e:  # handed to the consumer, raised there
            self._put(e)
            return
        self._put(_DONE)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        while True:
            item = self._q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> "BackgroundLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
