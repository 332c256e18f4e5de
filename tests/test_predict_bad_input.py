"""`aunet predict`, `models`, `export` and `import-reference` under bad input, as a new user meets
it: nothing already computed lost, nothing trusted that failed, one line for each mistake."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from flows.cli import main
from pipeline.predict.bundle import BundleError, read_spec
from pipeline.config import PredictConfig
from stages import predict
from stages.predict_outputs import table, write_table
from pipeline.predict.predictor import Row
from test_predict import BLAZE, MEDIA, _predict, _read, bundles, reference_clone  # noqa: F401

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not BLAZE.exists(), reason="../shared absent: no media, no weights")]
DATA = Path(__file__).parent / "data"
# tests/data/vfr_20_frames.mp4 (64x64, no face), made with ffmpeg 5.1:
#   ffmpeg -f lavfi -i testsrc=size=64x64:rate=30 -frames:v 20
#     -vf "setpts='if(lt(N,10),N/30,10/30+(N-10)/10)/TB'" -fps_mode passthrough -c:v mpeg4
#     -q:v 5 -video_track_timescale 1000 vfr_20_frames.mp4
# Its frames' presentation times (ffprobe -show_entries frame=pts_time); nominal rate 15.8 fps:
VFR_PTS = [0.0, 0.033, 0.067, 0.1, 0.133, 0.167, 0.2, 0.233, 0.267, 0.3,
           0.333, 0.433, 0.533, 0.633, 0.733, 0.8, 0.933, 1.0, 1.133, 1.233]


def _blank_video(path: Path, frames: int, fps: float, side: int = 16) -> Path:
    """A face-free video: frames without a face cost detection only (no FAN pass)."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (side, side))
    for _ in range(frames):
        w.write(np.zeros((side, side, 3), np.uint8))
    w.release()
    return path


def _frames_of(video: Path, folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    cap, out = cv2.VideoCapture(str(video)), []
    for i in range(n):
        ok, frame = cap.read()
        out.append(folder / f"frame_{i:03d}.png")
        cv2.imwrite(str(out[-1]), frame)
    cap.release()
    return out


def _one_line_error(capsys, argv: list[str], *, what: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and what in err and "Traceback" not in err, err
    return err


def test_skip_existing_redoes_what_failed_or_was_damaged(bundles, capsys, tmp_path):
    whole = tmp_path / "whole.avi"  # AVI (MJPG) decodes up to where it was cut; mp4's index is
    w = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), 10, (16, 16))  # at its end
    for i in range(40):
        w.write(np.full((16, 16, 3), 5 * i, np.uint8))
    w.release()
    cut = tmp_path / "cut.avi"  # decodes some frames, fewer than its container lists
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    blank = _blank_video(tmp_path / "blank.mp4", 20, 10)
    out = tmp_path / "out"
    code, _, err = _predict(capsys, bundles["au_fan"], out, cut, blank)
    assert code == 2 and "truncated" in err  # bad input: exit 2 (flows/cli.py)
    rec = json.loads((out / "cut.json").read_text())
    assert rec["complete"] is False and "truncated" in rec["error"]
    code, text, err = _predict(capsys, bundles["au_fan"], out, cut, blank, extra=["--skip-existing"])
    assert code == 2 and "truncated" in err  # the failed input is predicted again, not skipped
    assert [line.split()[0] for line in text.splitlines() if "skipped" in line] == ["blank.mp4"]
    csv = out / "blank.csv"
    full = csv.read_text()
    csv.write_text("\n".join(full.splitlines()[:5]) + "\n")  # cut by hand, its record intact
    code, text, _ = _predict(capsys, bundles["au_fan"], out, blank, extra=["--skip-existing"])
    assert code == 0 and "skipped" not in text and csv.read_text() == full
    (out / "blank_timeline.png").unlink()  # an output gone
    code, text, _ = _predict(capsys, bundles["au_fan"], out, blank, extra=["--skip-existing"])
    assert code == 0 and "skipped" not in text and (out / "blank_timeline.png").is_file()
    code, text, _ = _predict(capsys, bundles["au_fan"], out, blank, extra=["--skip-existing"])
    assert code == 0 and "skipped" in text  # whole and unchanged: skipped
    code, text, _ = _predict(capsys, bundles["au_fan"], out, blank, extra=["--skip-existing",
                                                                           "--render"])
    assert "skipped" not in text and (out / "blank_annotated.mp4").is_file()  # other options


def test_a_corrupt_frame_or_image_gets_its_row_and_the_others_their_values(bundles, capsys, tmp_path):
    seq = _frames_of(MEDIA / "videos" / "single_face.mp4", tmp_path / "seq", 6)
    seq[2].write_bytes(b"not a png")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("aflw-test.jpg", "single_face.jpg"):
        shutil.copy(MEDIA / "images" / name, imgs / name)
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (imgs / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    code, _, err = _predict(capsys, bundles["au_fan"], out, tmp_path / "seq", extra=["--sequence"])
    assert code == 2 and "1 of 6 frames could not be decoded" in err and "frame_002.png" in err
    df = _read(out / "seq.csv")
    assert len(df) == 6 and list(df.frame) == [1, 2, 3, 4, 5, 6]
    assert df.success[2] == 0 and "not a decodable image" in df.reason[2] and np.isnan(df.AU01_p[2])
    good = df.drop(index=2)
    assert (good.success == 1).all() and good.AU01_p.notna().all()
    code, _, err = _predict(capsys, bundles["au_fan"], out, imgs)
    assert code == 2 and "2 of 4 images could not be decoded" in err
    img = _read(out / "imgs.csv").set_index("file")
    assert img.loc[["aflw-test.jpg", "single_face.jpg"], "success"].tolist() == [1, 1]
    assert img.loc[["aflw-test.jpg", "single_face.jpg"], "AU01_p"].notna().all()
    assert img.loc["empty.png", "success"] == 0 and "empty file" in img.loc["empty.png", "reason"]


def test_out_inside_an_input_folder_is_never_read_as_input(bundles, capsys, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(MEDIA / "images" / "single_face.jpg", src / "face.jpg")
    for out in (src / "res", src / "res2"):  # the second run must not read the first's outputs
        code, _, err = _predict(capsys, bundles["au_fan"], out, src, extra=["--save-aligned"])
        assert code == 0, err
        assert len(_read(out / "in.csv")) == 1 and list(out.glob("*.csv")) == [out / "in.csv"]
    assert list((src / "res" / "in_aligned").glob("*.png"))  # outputs that look like inputs
    cfg = PredictConfig(inputs=(src,), model=bundles["au_fan"], out=tmp_path / "elsewhere")
    assert [(u.name, len(u.files)) for u in predict.units(cfg)] == [("in", 1)]


def test_inputs_whose_names_collide_get_distinct_outputs(bundles, capsys, tmp_path):
    paths = [tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4", tmp_path / "c" / "b_clip_1.mp4",
             tmp_path / "d" / "CLIP.mp4"]
    for i, p in enumerate(paths):
        p.parent.mkdir()
        _blank_video(p, 3 + i, 10)
    code, _, err = _predict(capsys, bundles["au_fan"], tmp_path / "out", *paths)
    assert code == 0, err
    tables = sorted((tmp_path / "out").glob("*.csv"))
    assert len(tables) == 4 and sorted(len(_read(t)) for t in tables) == [3, 4, 5, 6]


def test_variable_frame_rate_timestamps_are_each_frames_presentation_time(bundles, capsys, tmp_path):
    code, _, err = _predict(capsys, bundles["au_fan"], tmp_path, DATA / "vfr_20_frames.mp4")
    assert code == 0, err
    df = _read(tmp_path / "vfr_20_frames.csv")
    np.testing.assert_allclose(df.timestamp, VFR_PTS, atol=1e-9)  # 0.333, not 10 / 15.8


def test_numbers_are_written_exactly_past_1000_seconds_and_pixels(bundles, capsys, tmp_path):
    video = _blank_video(tmp_path / "long.mp4", 302, 0.3)  # 1003.3 s, 302 face-free frames
    code, _, err = _predict(capsys, bundles["au_fan"], tmp_path / "out", video)
    assert code == 0, err
    text = (tmp_path / "out" / "long.csv").read_text()
    assert "e+" not in text and "e-" not in text
    df = _read(tmp_path / "out" / "long.csv")
    assert df.timestamp.is_unique and df.timestamp.iloc[-1] == 1003.333
    assert text.splitlines()[-1].split(", ")[2] == "1003.333"
    rows = [Row(0, 0, True, 0.98766, np.array([1234.56, 10.04, 2000.0, 99.95], np.float32),
                np.full((5, 2), 1500.25, np.float32), np.array([0.00001, 0.99996]))]
    df = table(rows, ["AU01", "AU02"], {"AU01": 0.5, "AU02": 0.5}, fps=30.0)
    write_table(df, tmp_path / "t.csv", "csv")
    row = dict(zip(*[line.split(", ") for line in (tmp_path / "t.csv").read_text().splitlines()]))
    assert (row["bbox_x0"], row["bbox_x1"], row["kp_y_4"]) == ("1234.6", "2000.0", "1500.2")
    assert (row["AU01_p"], row["AU02_p"], row["confidence"]) == ("0.0000", "1.0000", "0.9877")


def test_bad_options_are_one_line_errors(bundles, capsys, tmp_path, monkeypatch):
    import torch

    video = _blank_video(tmp_path / "v.mp4", 3, 10)
    base = ["predict", str(video), "--model", str(bundles["au_fan"]), "--out", str(tmp_path / "o"),
            "--allow-random-weights", "--quiet"]
    _one_line_error(capsys, base + ["--fps", "0"], what="--fps 0")
    _one_line_error(capsys, base + ["--fps", "-30", "--sequence"], what="--fps -30")
    _one_line_error(capsys, base + ["--batch-size", "0"], what="--batch-size 0")
    _one_line_error(capsys, base + ["--device", "bogus"], what="--device bogus")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _one_line_error(capsys, base + ["--device", "cuda"], what="no GPU is visible")
    assert "--device cpu" in err and "auto" in err
    (tmp_path / "file").write_text("x")
    base[base.index("--out") + 1] = str(tmp_path / "file")
    _one_line_error(capsys, base, what="is a file, not a folder")
    _one_line_error(capsys, ["models", str(tmp_path / "nowhere")], what="no such folder")


def test_models_lists_a_tampered_or_edited_bundle_as_refused(bundles, capsys, tmp_path):
    for name in ("good", "tampered", "edited"):
        shutil.copytree(bundles["au_fan"], tmp_path / "m" / name)
    head = tmp_path / "m" / "tampered" / "head.pt"
    data = bytearray(head.read_bytes())
    data[-100] ^= 1
    head.write_bytes(bytes(data))
    spec_file = tmp_path / "m" / "edited" / "model.json"
    raw = json.loads(spec_file.read_text())
    raw["thresholds"]["AU01"] = 0.3  # a tuned threshold: legitimate, but only on purpose
    spec_file.write_text(json.dumps(raw))
    assert main(["models", str(tmp_path / "m")]) == 0
    lines = capsys.readouterr().out.splitlines()
    refused = [line for line in lines if "REFUSED" in line]
    assert len(refused) == 2 and "does not hold the bytes" in " ".join(refused)
    assert any("edited" in line and "--accept-edit" in line for line in refused)
    assert any(line.endswith(str(tmp_path / "m" / "good")) for line in lines)
    with pytest.raises(BundleError, match="accept-edit"):
        read_spec(tmp_path / "m" / "edited")
    assert main(["models", "--accept-edit", str(tmp_path / "m" / "edited")]) == 0
    assert read_spec(tmp_path / "m" / "edited").thresholds["AU01"] == 0.3


def test_reexport_is_published_whole_and_never_replaces_another_model(bundles, capsys, tmp_path,
                                                                      monkeypatch):
    from pipeline.predict.bundle import load_head_of
    from pipeline.config import FacesConfig, load_config
    from pipeline.errors import StoreLocked
    from stages import bundles as bundle_stage
    from store.catalog import Catalog

    source = bundles["au_fan"].parent  # the fixture's dataset folder holds its config
    cfg = load_config(next(source.glob("*.yaml")))
    cat, det = Catalog(cfg.store), FacesConfig(detector_weights=BLAZE)
    out = tmp_path / "b"
    bundle_stage.export(cfg, cat, "au_fan", 1, out, detector=det)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def broken(*a, **k):
        raise OSError("disk gone while copying the detector")

    monkeypatch.setattr(bundle_stage, "_detector", broken)
    with pytest.raises(OSError, match="disk gone"):  # another head, replaced on purpose, fails
        bundle_stage.export(cfg, cat, "aunet", 1, out, detector=det, force=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    load_head_of(out, read_spec(out))  # the old bundle still loads
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no debris left
    with pytest.raises(BundleError, match="another model.*--force"):
        bundle_stage.export(cfg, cat, "aunet", 1, out, detector=det)
    bundle_stage.export(cfg, cat, "aunet", 1, out, detector=det, force=True)
    assert read_spec(out).variant.value == "aunet"
    with cat.lock(cfg.dataset.name, "train"):  # train --force is replacing the head
        with pytest.raises(StoreLocked, match="train"):
            bundle_stage.export(cfg, cat, "aunet", 1, out, detector=det)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    with pytest.raises(BundleError, match="not a bundle"):
        bundle_stage.export(cfg, cat, "aunet", 1, tmp_path / "notes", detector=det, force=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(BundleError, match="is a file"):
        bundle_stage.export(cfg, cat, "aunet", 1, tmp_path / "f", detector=det)


def test_import_reference_out_that_is_a_file(reference_clone, capsys, tmp_path):  # noqa: F811
    (tmp_path / "f").write_text("x")
    _one_line_error(capsys, ["import-reference", str(reference_clone), "--out", str(tmp_path / "f"),
                             "--detector-weights", str(BLAZE)], what="is a file")


def test_the_flow_runs_the_command_lines_function(monkeypatch, tmp_path):
    from flows import predict_flow as pf

    seen = {}

    def run(cfg, *, progress=True, client=None, map_units=None):
        seen.update(cfg=cfg, map_units=map_units)
        return {"results": [], "skipped": ["x.mp4"], "failed": [], "random_weights": False}

    monkeypatch.setattr(pf.predict, "run", run)
    monkeypatch.setattr(pf, "get_run_logger", lambda: __import__("logging").getLogger("t"))
    params = pf.PredictParams(inputs=["x.mp4"], model="m", out=str(tmp_path))
    summary = pf.predict_flow.fn(params)
    assert seen["map_units"] is pf.on_dask and seen["cfg"].skip_existing
    assert summary["skipped"] == ["x.mp4"]
