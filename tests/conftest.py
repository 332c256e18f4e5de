"""Shared fixtures: the read-only `../shared` folder, a temporary artifact store, tiny media."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from store.catalog import Catalog

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINY = 16  # side of the tiny test images (pixels): decodable, and fast to write


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared` beside the repository; tests that need it skip where it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED}: real label tables, media and weights are "
                    "only on the project's machines")
    return SHARED


@pytest.fixture
def tmp_store(tmp_path: Path) -> Catalog:
    """An empty artifact store under the test's temporary folder."""
    return Catalog(tmp_path / "store")


@pytest.fixture
def make_feature_store(tmp_path: Path):
    """Write features x (N, C, H, W) to a real feature store and open it: make(x, fps=8, dtype).

    Tests of training and prediction read through the real reader (its dtype and channels-last
    options included) instead of a stand-in that could drift from it.
    """
    from store.features import FeatureStore, create_feature_store, shard_range, write_shard

    def make(x: np.ndarray, frames_per_shard: int = 8, dtype: str = "float16") -> FeatureStore:
        n, c, h, w = x.shape
        path = tmp_path / f"features-{len(list(tmp_path.glob('features-*')))}.zarr"
        g = create_feature_store(path, n, channels=c, size=h, dtype=dtype,
                                 frames_per_shard=frames_per_shard, attrs={"provenance": {"key": "t"}})
        for s in range(-(-n // frames_per_shard)):
            a, b = shard_range(s, n, frames_per_shard)
            write_shard(g, s, x[a:b], np.ones(b - a, dtype=bool))
        return FeatureStore(path)

    return make


def _write_image(path: Path, seed: int = 0) -> Path:
    """A tiny real JPEG / PNG (by extension) written with OpenCV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (TINY, TINY, 3), dtype=np.uint8)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cv2 could not write {path}")
    return path


def _write_video(path: Path, n_frames: int) -> Path:
    """A tiny real mp4v / avi video of `n_frames` frames."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.suffix == ".mp4" else "MJPG"))
    writer = cv2.VideoWriter(str(path), fourcc, 20.0, (32, 32))
    for i in range(n_frames):
        writer.write(np.full((32, 32, 3), (i * 7) % 256, dtype=np.uint8))
    writer.release()
    return path


@pytest.fixture
def write_image():
    return _write_image


@pytest.fixture
def write_video():
    return _write_video


@pytest.fixture
def one_thread():
    """The CPU is shared: one intra-op thread is faster here than two contending ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
