"""Temporal consistency for video rows (`faces.temporal: persist`).

A face on one row is kept only when it persists: the rows right before and after it in the same
video (whatever their frame gap) also hold a face overlapping its box, so that it is part of a run
of at least `faces.persist_frames` rows. A false face that flickers for a frame or two goes; a real
face that stays on screen stays. Runs are counted inside a block of rows only (blocks are computed
and resumed independently), so a face seen on fewer than persist_frames rows at a block edge can
be lost there; docs/faces.md has the measured effect.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, Iterator, Optional, Sequence, TypeVar

import numpy as np

from pipeline.faces.geometry import iou_matrix
from pipeline.faces.types import Detections

PERSIST_IOU = 0.3  # boxes of one face on neighbouring rows overlap at least this much
T = TypeVar("T")


def _run(boxes: np.ndarray, side: Sequence[Optional[Detections]]) -> np.ndarray:
    """(k,) how many of the rows in `side` (nearest first) hold, one after another, a detection
    overlapping each of `boxes` (k, 4); a row without one (or without an image) ends the run."""
    run = np.zeros(len(boxes), int)
    alive = np.ones(len(boxes), bool)
    for dets in side:
        if dets is None or len(dets) == 0:
            break
        alive &= (iou_matrix(boxes, dets.boxes) >= PERSIST_IOU).any(axis=1)
        run += alive
    return run


def persistent(current: Detections, before: Sequence[Optional[Detections]],
               after: Sequence[Optional[Detections]], n: int) -> Detections:
    """The detections of `current` that lie on a run of at least `n` rows: `before` and `after`
    are up to n - 1 neighbouring rows of the same video, nearest first (None: no image)."""
    if len(current) == 0:
        return current
    keep = _run(current.boxes, before) + 1 + _run(current.boxes, after) >= n
    return current.take(np.flatnonzero(keep))


def filter_stream(items: Iterable[T], dets: Callable[[T], Optional[Detections]],
                  video: Callable[[T], Optional[str]], replace: Callable[[T, Detections], T],
                  n: int) -> Iterator[T]:
    """Apply `persistent` to a stream of rows in order, holding back n - 1 rows of look-ahead.

    dets(item): the row's detections (None: no image); video(item): the row's video (None: an
    image, left alone); replace(item, d): the item with detections d.
    """
    span = n - 1
    past: deque = deque(maxlen=span)  # (video, dets) of the rows already emitted, oldest first
    ahead: deque = deque()  # items detected but not yet emitted

    def emit() -> T:
        item = ahead.popleft()
        v, d = video(item), dets(item)
        if v is not None and d is not None:
            before = _same_video(((pv, pd) for pv, pd in reversed(past)), v)
            after = _same_video(((video(x), dets(x)) for x in ahead), v)
            item = replace(item, persistent(d, before, after[:span], n))
        past.append((v, d))
        return item

    for item in items:
        ahead.append(item)
        if len(ahead) > span:
            yield emit()
    while ahead:
        yield emit()


def _same_video(rows: Iterable[tuple], v: str) -> list[Optional[Detections]]:
    """Detections of the (video, dets) rows, nearest first, up to the first row of another video."""
    out = []
    for rv, rd in rows:
        if rv != v:
            break
        out.append(rd)
    return out
