"""The manifest stage end to end: the demo dataset, caching by fingerprint, the printed summary."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.cli import main
from pipeline.aus import AUSet
from pipeline.config import load_config
from pipeline.manifest import au_set_of, label_matrix
from stages import manifest as stage
from stages import runner
from store import manifests
from store.provenance import read_provenance

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo")  # generated once (a few seconds), read by each test


def demo_cfg(demo_root: Path, store: Path, **more):
    return load_config(DEMO, {"dataset.root": str(demo_root), "store": str(store), **more})


def test_demo_manifest(demo_root, tmp_store):
    cfg = demo_cfg(demo_root, tmp_store.root)
    summary = runner.execute("manifest", cfg, tmp_store, progress=False)
    assert summary["skipped"] is False
    assert (summary["frames"], summary["subjects"], summary["videos"]) == (720, 30, 30)
    assert summary["folds"] == {1: 240, 2: 240, 3: 240}
    assert summary["report"]["left_out"] == {} and summary["unknown_labels"] == 0
    table = manifests.load(tmp_store, "demo")
    assert au_set_of(table) is AUSet.BP4D
    df = table.to_pandas()
    assert list(df.row) == list(range(720))
    assert df.equals(df.sort_values(["video_id", "frame"]).reset_index(drop=True))
    assert df.groupby("subject")["fold"].nunique().eq(1).all()  # subject-exclusive
    assert df.groupby("fold")["subject"].nunique().to_dict() == {1: 10, 2: 10, 3: 10}
    # Labels and landmarks are exactly the generator's.
    src = pd.read_csv(demo_root / "manifest.csv", dtype={"subject": str})
    np.testing.assert_array_equal(label_matrix(df, AUSet.BP4D), label_matrix(src, AUSet.BP4D))
    with_face = df.landmarks.notna()
    assert with_face.sum() == (src.landmarks.fillna("") != "").sum()
    assert all(len(x) == 136 for x in df.landmarks[with_face])
    prov = read_provenance(tmp_store.manifest("demo"))
    assert prov["stage"] == "manifest" and prov["rows"] == 720
    saved = json.loads(tmp_store.manifest_report("demo").read_text())
    assert saved["frames"] == 720 and saved["report"]["frames_kept"] == 720


def test_rerun_is_skipped_and_force_recomputes(demo_root, tmp_store):
    cfg = demo_cfg(demo_root, tmp_store.root)
    runner.execute("manifest", cfg, tmp_store, progress=False)
    path = tmp_store.manifest("demo")
    before = (path.stat().st_mtime_ns, read_provenance(path)["key"])
    again = runner.execute("manifest", cfg, tmp_store, progress=False)
    assert again["skipped"] is True and again["frames"] == 720
    assert path.stat().st_mtime_ns == before[0]
    assert "skipped (up to date)" in stage.format_summary(again)
    forced = runner.execute("manifest", cfg, tmp_store, force=True, progress=False)
    assert forced["skipped"] is False and path.stat().st_mtime_ns != before[0]
    assert read_provenance(path)["key"] == before[1]  # same inputs, same fingerprint
    changed = demo_cfg(demo_root, tmp_store.root, **{"dataset.n_folds": 2})
    redone = runner.execute("manifest", changed, tmp_store, progress=False)
    assert redone["skipped"] is False and set(redone["folds"]) == {1, 2}


def test_skip_mode_report_is_saved_and_printed(tmp_path, tmp_store, write_image):
    root = tmp_path / "mine"
    for i in range(3):
        write_image(root / f"{i}.jpg")
    rows = [f"S{i},{i}.jpg,{i % 2}" for i in range(3)] + ["S9,missing.jpg,1", "S3,3.jpg,7"]
    (root / "manifest.csv").write_text("subject,image_path,AU01\n" + "\n".join(rows) + "\n")
    (tmp_path / "cfg.yaml").write_text(
        "dataset:\n  name: mine\n  layout: manifest\n  root: mine\n  au_set: bp4d\n"
        "  folds: kfold\n  on_bad_input: skip\n")
    cfg = load_config(tmp_path / "cfg.yaml", {"store": str(tmp_store.root)})
    summary = runner.execute("manifest", cfg, tmp_store, progress=False)
    assert summary["frames"] == 3
    assert summary["report"]["left_out"] == {"no_image": 1, "label_out_of_alphabet": 1}
    text = stage.format_summary(summary)
    assert "frames left out: 2" in text
    assert "manifest.csv:5: image not found" in text and "manifest.csv:6: AU01 = '7'" in text
    assert "AU01 0.333" in text and "AU02 -" in text  # rate over known labels; '-' = none known


def test_format_summary_caps_examples_and_orders_folds():
    summary = {"frames": 10, "subjects": 2, "videos": 2, "unknown_labels": 0,
               "folds": {"1": 4, "0": 6}, "positive_rate": {"AU01": 0.5},
               "report": {"left_out": {"no_image": 5}, "left_out_total": 5,
                          "examples": {"no_image": [f"a.csv:{i}: x" for i in range(5)]},
                          "notes": {"images without labels": 3}},
               "skipped": False, "path": "/s/m.parquet"}
    text = stage.format_summary(summary)
    assert text.count("e.g. a.csv:") == 3 and "no_image: 5" in text
    assert text.index("0 (never tested): 6") < text.index("1: 4")
    assert "note: images without labels: 3" in text and "skipped" not in text


def test_cli_manifest_prints_the_summary(demo_root, tmp_store, capsys):
    code = main(["manifest", "--config", str(DEMO), "--quiet", "--set", f"store={tmp_store.root}",
                 "--set", f"dataset.root={demo_root}"])
    out = capsys.readouterr().out
    assert code == 0 and "frames 720   subjects 30   videos 30" in out
    assert "1: 240  2: 240  3: 240" in out and "frames left out: 0" in out
