"""Temporal triplets: neighbours by frame number within a video, substitution counted by reason."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.learning.temporal import triplet_rows


def _manifest(videos: dict[str, list[int]]) -> pd.DataFrame:
    vid = [v for v, frames in videos.items() for _ in frames]
    frame = [f for frames in videos.values() for f in frames]
    return pd.DataFrame({"row": np.arange(len(frame)), "video_id": vid, "frame": frame})


def test_neighbours_and_substitution_reasons():
    # video a: frames 1..5 then a gap (6 missing) then 7; video b: 1..3
    df = _manifest({"a": [1, 2, 3, 4, 5, 7], "b": [1, 2, 3]})
    valid = np.ones(len(df), bool)
    valid[4] = False  # a/5 has no face
    rows, counts = triplet_rows(df, valid, T=2)
    expected = np.array([
        [0, 0, 2],  # a/1: a/-1 before the video (boundary); a/3
        [1, 1, 3],  # a/2: boundary; a/4
        [0, 2, 2],  # a/3: a/1; a/5 has no face (missing_face)
        [1, 3, 3],  # a/4: a/2; a/6 missing inside the span (gap)
        [2, 4, 5],  # a/5: a/3; a/7 (a triplet is built even when the middle has no face)
        [5, 5, 5],  # a/7: a/5 has no face; a/9 after the end (boundary)
        [6, 6, 8],  # b/1: boundary; b/3
        [7, 7, 7],  # b/2: boundary on both sides
        [6, 8, 8],  # b/3: b/1; boundary
    ])
    np.testing.assert_array_equal(rows, expected)
    assert rows.dtype == np.int64
    # boundary: a/1 prev, a/2 prev, a/7 next, b/1 prev, b/2 prev+next, b/3 next = 7
    assert counts["boundary"] == 7
    assert counts["gap"] == 1  # a/4 next
    assert counts["missing_face"] == 2  # a/3 next, a/7 prev
    assert counts["substituted"] == 10
    assert counts["complete"] == 1  # only a/5 has both neighbours


def test_neighbours_never_cross_videos():
    df = _manifest({"x": [10, 20, 30], "y": [10, 20, 30]})
    rows, _ = triplet_rows(df, np.ones(6, bool), T=10)
    np.testing.assert_array_equal(rows[3], [3, 3, 4])  # y/10 never takes x/... as neighbour
    np.testing.assert_array_equal(rows[1], [0, 1, 2])


def test_bad_input_named():
    df = _manifest({"a": [1, 2]})
    with pytest.raises(ValueError, match="valid has 1 entries"):
        triplet_rows(df, np.ones(1, bool), 1)
    with pytest.raises(ValueError, match="T must be >= 1"):
        triplet_rows(df, np.ones(2, bool), 0)
    dup = pd.DataFrame({"row": [0, 1], "video_id": ["a", "a"], "frame": [1, 1]})
    with pytest.raises(ValueError, match="more than once"):
        triplet_rows(dup, np.ones(2, bool), 1)
