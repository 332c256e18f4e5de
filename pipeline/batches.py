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


def read_frames(read: Callable[[np.ndarray], np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Read `rows` (any shape, repeats allowed) in ascending order once each. (*rows.shape, C, H, W)"""
    uniq, inverse = np.unique(rows.ravel(), return_inverse=True)
    data = read(uniq)  # (U, C, H, W), frames read in order
    return data[inverse].reshape(*rows.shape, *data.shape[1:])


def random_shift(x: torch.Tensor, max_shift: int, rng: np.random.Generator) -> torch.Tensor:
    """Shift each sample's feature maps by up to `max_shift` cells, zero filled.

    x: (B, S, C, H, W), S frames per sample (1 or 3): the S frames of a sample share one shift,
    so temporal differences are not polluted by the augmentation.
    """
    if max_shift <= 0:
        return x
    b, _, _, h, w = x.shape
    m = max_shift
    # one copy of the batch (a padded intermediate would cost a second full copy): out[y] = x[y - dy]
    out = torch.zeros_like(x)
    offsets = rng.integers(-m, m + 1, size=(b, 2))
    for i, (dy, dx) in enumerate(offsets):
        dy, dx = int(dy), int(dx)
        out[i, :, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            x[i, :, :, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
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
