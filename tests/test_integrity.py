"""Integrity across stages: store-relative identity, umask, locks between readers
and writers, trusted checkpoints, the CLI's one-line errors and exit codes."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_stages
from flows.cli import main
from pipeline.config import Variant, load_config
from pipeline.errors import StaleArtifact, StoreLocked
from stages import runner
from store.catalog import Catalog
from store.provenance import read_provenance, write_json

pytestmark = pytest.mark.usefixtures("one_thread")


def test_moved_store_keeps_every_artifact_current(mini, tmp_path):
    cfg = mini(train={"epochs": 1, "max_steps_per_epoch": 1, "variants": ["au_fan"]})
    run_stages(cfg, "manifest", "faces", "features", "prior", "train", "evaluate", "report")
    moved = tmp_path / "elsewhere" / "store"
    shutil.copytree(cfg.store, moved)
    shutil.rmtree(cfg.store)  # nothing may still point at the old place
    cfg2 = cfg.model_copy(update={"store": moved})
    done_now = {
        "manifest": lambda s: not s["skipped"], "faces": lambda s: s["computed_chunks"],
        "features": lambda s: s["computed_this_run"],
        "prior": lambda s: any(not f["skipped"] for f in s["folds"]),
        "train": lambda s: any(not h["skipped"] for h in s["heads"]),
        "evaluate": lambda s: not s["skipped"], "report": lambda s: not s["skipped"]}
    for stage in runner.STAGES:
        assert not done_now[stage](run_stages(cfg2, stage)), f"{stage} recomputed after the move"


def test_artifacts_honour_the_umask(mini):
    old = os.umask(0o027)
    try:
        cfg = mini()
        run_stages(cfg, "manifest", "faces")
    finally:
        os.umask(old)
    cat = Catalog(cfg.store)
    for p in (cat.manifest("mini"), Path(str(cat.manifest("mini")) + ".provenance.json"),
              cat.manifest_report("mini")):
        assert p.stat().st_mode & 0o777 == 0o640, p
    assert cat.crops(cfg).stat().st_mode & 0o777 == 0o750


def test_readers_and_writers_exclude_each_other(mini):
    cfg = mini(train={"variants": ["au_fan"], "folds": [1]})
    run_stages(cfg, "manifest", "faces", "features")
    cat = Catalog(cfg.store)
    with cat.lock("mini", "train", reads=runner.module("train").reads(cfg)):  # training runs
        with pytest.raises(StoreLocked, match="reads|another run"):
            runner.execute("features", cfg, cat, force=True, progress=False)
        with pytest.raises(StoreLocked, match="stage 'evaluate' of dataset 'mini' reads stage "
                                              "'train'"):
            runner.execute("evaluate", cfg, cat, progress=False)
    with cat.lock("mini", "features", reads=runner.module("features").reads(cfg)):  # rewriting
        with pytest.raises(StoreLocked, match="reads stage 'features'"):
            runner.execute("train", cfg, cat, progress=False)
    with cat.lock("mini", "faces", reads=[("mini", "manifest")]):  # two readers may share
        with cat.lock("mini", "features", reads=[("mini", "manifest")]):
            pass


def test_lock_on_a_read_only_store_needs_no_write(mini, monkeypatch):
    cfg = mini()
    run_stages(cfg, "manifest")
    cat = Catalog(cfg.store)
    real_open = open

    def read_only(path, mode="r", *a, **kw):  # what a read-only mount does (root ignores chmod)
        if str(path).endswith(".lock") and mode != "r":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr("builtins.open", read_only)
    assert run_stages(cfg, "manifest")["skipped"]  # up to date: nothing to write, no error


def test_corrupt_head_is_not_up_to_date_and_is_retrained(mini):
    cfg = mini(train={"variants": ["au_fan"], "folds": [1]})
    run_stages(cfg, "manifest", "faces", "features", "train")
    final = Catalog(cfg.store).head_checkpoint(cfg, Variant.AU_FAN, 1)
    data = bytearray(final.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    final.write_bytes(bytes(data))
    with pytest.raises(StaleArtifact, match="run `aunet train`"):
        run_stages(cfg, "evaluate")
    s = run_stages(cfg, "train")
    assert not s["heads"][0]["skipped"]
    run_stages(cfg, "evaluate")


def test_debris_of_a_killed_run_is_removed_by_the_next(mini):
    cfg = mini()
    run_stages(cfg, "manifest", "faces")
    cat = Catalog(cfg.store)
    crops = cat.crops(cfg)
    partial = crops / "crops" / "c" / "0" / "0" / "0" / "0.abc.partial"
    partial.write_bytes(b"half")
    tmp = cat.manifest("mini").parent / ".manifest.parquet.x1y2.tmp"
    tmp.write_bytes(b"half")
    assert run_stages(cfg, "faces")["cleaned"] == [cat.rel(partial)]
    assert run_stages(cfg, "manifest")["cleaned"] == [cat.rel(tmp)]
    assert not partial.exists() and not tmp.exists()


# -- the command line ----------------------------------------------------------------------------
def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("override,message", [
    ("train.epochs=[1,", "the value is not valid YAML"),
    ("train.epochs.x=1", "'train.epochs' is a value, not a section"),
    ("train.bogus=1", "train.bogus: Extra inputs are not permitted"),
])
def test_cli_bad_override_is_one_line(capsys, mini, override, message):
    cfg = mini()
    path = Path(cfg.dataset.root).parent / "mini.yaml"
    code, err = _cli(capsys, "manifest", "--config", str(path), "--set", override)
    assert code == 2 and message in err and "Traceback" not in err


def test_cli_config_folder_and_duplicate_keys(capsys, tmp_path):
    code, err = _cli(capsys, "manifest", "--config", str(tmp_path))
    assert code == 2 and "is a folder" in err and len(err.splitlines()) == 1
    bad = tmp_path / "dup.yaml"
    bad.write_text("dataset:\n  name: a\ntrain:\n  epochs: 1\ntrain:\n  epochs: 2\n")
    code, err = _cli(capsys, "manifest", "--config", str(bad))
    assert code == 2 and "line 5: key 'train' is given twice" in err


def test_cli_missing_detector_weights_is_one_line(capsys, mini, tmp_path):
    cfg = mini()
    path = Path(cfg.dataset.root).parent / "mini.yaml"
    run_stages(cfg, "manifest")
    code, err = _cli(capsys, "faces", "--config", str(path), "--set", "faces.detector=blazeface",
                     "--set", f"faces.detector_weights={tmp_path / 'none.pth'}")
    assert code == 2 and "file not found" in err and "Traceback" not in err


def test_cli_failed_unit_exits_non_zero_and_good_units_finish(capsys, mini, tmp_path):
    cfg = mini(faces={"chunk_frames": 12})
    path = Path(cfg.dataset.root).parent / "mini.yaml"
    bogus = tmp_path / "blazeface.pth"
    bogus.write_bytes(b"not weights")
    np.save(tmp_path / "anchors.npy", np.zeros((896, 4), np.float32))
    run_stages(cfg, "manifest")
    code, err = _cli(capsys, "faces", "--config", str(path), "--quiet", "--set",
                     "faces.detector=blazeface", "--set", f"faces.detector_weights={bogus}",
                     "--set", "faces.tile_pyramid=off")
    # every unit failed on the user's input (a file that is not BlazeFace weights): exit 2
    assert code == 2 and "3 unit(s) FAILED" in err and "block0:" in err and "not blazeface weights" in err
    out = capsys.readouterr()
    del out


def test_directory_as_image_fails_that_frame_only(mini):
    cfg = mini(n_subjects=3, n_frames=4)
    img = Path(cfg.dataset.root) / "S0" / "001.png"
    img.unlink()
    img.mkdir()  # a folder where an image should be
    run_stages(cfg, "manifest")
    s = run_stages(cfg, "faces")
    assert s["faces_found"] == 11 and s["failures"] == {"unreadable_image": 1}
    assert any("is a folder" in e for e in s["errors"])
