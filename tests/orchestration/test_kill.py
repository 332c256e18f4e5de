"""kill -9 at points across the stages: every rerun ends with values identical to an
uninterrupted run, and the debris the kill left is gone.

Each case starts `aunet <stage>` (or `aunet run`) as a real process, waits for a file that
proves the stage is half done, kills it with SIGKILL, then runs the pipeline to the end again.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_stages, write_mini_dataset
from pipeline.config import Variant, load_config
from stages import runner
from store import location, tables
from store.catalog import Catalog

pytestmark = pytest.mark.slow
AUNET = Path(sys.executable).parent / "aunet"
POLL_S = 0.01
S3_POLL_S = 0.05  # a listing of the bucket per poll
WAIT_S = 300
SECTIONS = {"faces": {"chunk_frames": 4}, "features": {"frames_per_shard": 4, "batch_size": 2},
            "train": {"epochs": 3, "max_steps_per_epoch": 3}}
# (command, the file whose appearance means "half done": the kill comes right after it)
CASES = [
    ("faces", "mini/faces/*/crops.zarr/chunk_done/c/1"),
    ("faces", "mini/faces/*/crops.zarr/chunk_done/c/3"),
    ("features", "mini/features/*/features.zarr/shard_done/c/3"),
    ("prior", "mini/prior/fold1/*.pt"),
    ("prior", "mini/prior/fold2/*.pt"),
    ("train", "mini/models/au_fan/fold1/*/epoch001.pt"),
    ("train", "mini/models/aunet/fold2/*/epoch002.pt"),
    ("evaluate", "mini/eval/mini/au_fan/fold1/*.parquet"),
    ("report", "reports/rendered/mini/*.png"),
    ("run", "mini/features/*/features.zarr/shard_done/c/2"),
    ("run", "mini/models/au_fan/fold2/*/epoch001.pt"),
    ("run", "mini/eval/mini/au_fan/fold2/*.parquet"),
]
# the same on a store in an S3 bucket (SeaweedFS): Zarr chunks are objects there, published
# without renames (store.location.publish_dir)
S3_CASES = [
    ("faces", "mini/faces/*/crops.zarr/chunk_done/c/2"),
    ("features", "mini/features/*/features.zarr/shard_done/c/3"),
    ("run", "mini/features/*/features.zarr/shard_done/c/2"),
    ("run", "mini/models/au_fan/fold2/*/epoch001.pt"),
]


ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # bit-identity needs one thread count


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Float sums depend on the thread count: every process here uses one thread."""
    before, env = torch.get_num_threads(), {k: os.environ.get(k) for k in ONE_THREAD}
    torch.set_num_threads(1)
    os.environ.update(ONE_THREAD)  # the Dask tasks' count comes from it (runner.task_threads)
    yield
    torch.set_num_threads(before)
    for k, v in env.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _dataset(root: Path) -> Path:
    return write_mini_dataset(root, n_subjects=3, n_frames=12, no_face=(4,), **SECTIONS)


def _values(cfg) -> dict:
    """Every artifact's values (not its timestamps or run ids)."""
    cat = Catalog(cfg.store)  # a folder or an S3 URL: read through store.location alike
    m = location.read_parquet(cat.manifest("mini")).drop_columns(["image_path", "video_path"])
    out = {"manifest": m.to_pandas()}  # (paths differ between the two dataset folders)
    g = location.open_group(cat.crops(cfg), "r")
    out |= {f"crops/{k}": g[k][:] for k in ("crops", "success", "boxes", "keypoints", "digest")}
    out["features"] = location.open_group(cat.features(cfg), "r")["features"][:]
    for fold in (1, 2, 3):
        out[f"prior{fold}"] = torch.load(location.readable(cat.prior(cfg, fold)),
                                         weights_only=True)["state_dict"]
        for v in cfg.train.variants:
            blob = torch.load(location.readable(cat.head_checkpoint(cfg, Variant(v), fold)),
                              weights_only=True)
            out[f"{v}{fold}"] = blob["state_dict"]
    run = tables.latest_run(cat, "mini")
    m = tables.read_run(cat, "metrics", "mini", run).to_pandas().drop(columns=["run"])
    out["metrics"] = m.sort_values(["variant", "fold", "au"]).reset_index(drop=True)
    return out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            for name in a[k]:
                assert torch.equal(a[k][name], b[k][name]), f"{k}.{name}"
        elif hasattr(a[k], "equals"):
            assert a[k].equals(b[k]), k
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cfg = load_config(_dataset(tmp_path_factory.mktemp("ref")))
    run_stages(cfg, *runner.STAGES)
    return _values(cfg)


def _kill_when(cmd: list[str], store, pattern: str) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, **ONE_THREAD})
    deadline = time.time() + WAIT_S
    while not list(store.glob(pattern)):
        if proc.poll() is not None:
            pytest.fail(f"{cmd[1]} ended ({proc.returncode}) before {pattern} appeared")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"{pattern} never appeared")
        time.sleep(POLL_S if isinstance(store, Path) else S3_POLL_S)
    assert proc.poll() is None, f"{cmd[1]} finished before the kill: the case tests nothing"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("command,trigger", CASES, ids=[f"{c}-{i}" for i, (c, _) in enumerate(CASES)])
def test_kill_9_then_rerun_gives_identical_values(tmp_path, reference, command, trigger):
    path = _dataset(tmp_path)
    cfg = load_config(path)
    stages = list(runner.STAGES)
    if command != "run":
        run_stages(cfg, *stages[:stages.index(command)])  # what comes before it, uninterrupted
    _kill_when([str(AUNET), command, "--config", str(path), *(["--quiet"] if command != "run" else [])],
               Path(cfg.store), trigger)
    run_stages(cfg, *stages)  # the rerun: resumes, cleans, finishes
    _same(reference, _values(cfg))
    leftovers = [p for p in Path(cfg.store).rglob("*")
                 if p.name.endswith((".tmp", ".partial")) or ".building-" in p.name]
    assert not leftovers, leftovers


@pytest.mark.parametrize("command,trigger", S3_CASES, ids=[f"{c}-{i}" for i, (c, _) in enumerate(S3_CASES)])
def test_kill_9_on_s3_then_rerun_gives_identical_values(tmp_path, reference, s3_bucket, command,
                                                        trigger):
    path = write_mini_dataset(tmp_path, n_subjects=3, n_frames=12, no_face=(4,),
                              store=f"s3://{s3_bucket}/store", **SECTIONS)
    cfg = load_config(path)
    stages = list(runner.STAGES)
    if command != "run":
        run_stages(cfg, *stages[:stages.index(command)])
    catalog = Catalog(cfg.store)
    _kill_when([str(AUNET), command, "--config", str(path), *(["--quiet"] if command != "run" else [])],
               catalog.root, trigger)
    run_stages(cfg, *stages)
    _same(reference, _values(cfg))
    assert not location.debris(catalog.dataset_dir("mini") / "faces")
    assert not location.debris(catalog.dataset_dir("mini") / "features")
