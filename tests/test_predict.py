"""`aunet export` / `models` / `predict` on real media (../shared, skipped where absent): bundles,
the OpenFace-style tables, no-face rows, bad inputs, tracking, temporal modes, and predictions
checked against the same model run by hand."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import SHARED, run_stages, write_mini_dataset
from flows.cli import main
from pipeline.faces.align import face_transform, warp
from pipeline.predict.bundle import BundleError, detector_config, load_backbone_of, load_head_of, read_spec
from pipeline.config import FacesConfig, TemporalMode, load_config
from pipeline.predict.predictor import needed
from pipeline.faces.factory import make_detector
from pipeline.video import frame_count, iter_video, read_image, video_fps
from stages.bundles import export
from store.catalog import Catalog

MEDIA, BLAZE = SHARED / "media", SHARED / "weights" / "blazeface" / "blazeface.pth"
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not BLAZE.exists(), reason=f"{SHARED} absent: no media, no weights")]
T = 2  # the mini config's temporal offset


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    cfg = load_config(write_mini_dataset(root, train={"epochs": 1, "max_steps_per_epoch": 2,
                                                      "variants": ["au_fan", "aunet"], "folds": [1]}))
    run_stages(cfg, "manifest", "faces", "features", "prior", "train")
    det = FacesConfig(detector_weights=BLAZE)
    return {v: export(cfg, Catalog(cfg.store), v, 1, root / v, detector=det) for v in ("au_fan", "aunet")}


def _predict(capsys, bundle, out, *inputs, extra=()) -> tuple[int, str, str]:
    code = main(["predict", *map(str, inputs), "--model", str(bundle), "--out", str(out), "--quiet",
                 "--allow-random-weights", *extra])
    o = capsys.readouterr()
    return code, o.out, o.err


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, skipinitialspace=True)


def _by_hand(bundle: Path, frames: set[int]):
    """The bundle's own parts run by hand on frames of single_face.mp4: detect, keep the largest
    face, align, FAN (stored as float16, as the predictor keeps features). {frame: features},
    and the head."""
    spec = read_spec(bundle)
    fan, _ = load_backbone_of(bundle, spec, allow_random_weights=True)
    det = make_detector(detector_config(bundle, spec))
    feats = {}
    for i, image in iter_video(MEDIA / "videos" / "single_face.mp4", frames):
        d = det.detect(image)
        k = int(np.argmax((d.boxes[:, 2] - d.boxes[:, 0]) * (d.boxes[:, 3] - d.boxes[:, 1])))
        m = face_transform(d.keypoints[k], d.boxes[k], size=spec.crop.size,
                           eye_distance=spec.crop.eye_distance, margin=spec.crop.box_margin)
        x = torch.from_numpy(warp(image, m, spec.crop.size)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            feats[i] = fan(x).half().float()
    return feats, load_head_of(bundle, spec)


def test_bundle_contents_listing_and_refusals(bundles, capsys, tmp_path):
    spec = read_spec(bundles["aunet"])
    assert spec.variant.value == "aunet" and len(spec.aus) == 12 and spec.temporal_offset == T
    assert spec.random_weights and spec.backbone.random_seed == 0 and spec.thresholds["AU01"] == 0.5
    assert spec.provenance["fold"] == "fold1" and spec.provenance["trained_on_subjects"] == ["S1", "S2"]
    assert main(["models", str(bundles["aunet"].parent)]) == 0
    listed = capsys.readouterr().out
    assert "[RANDOM-WEIGHT BACKBONE]" in listed
    assert f"predict defaults: --temporal cached --tta none (T = {T}," in listed
    with pytest.raises(BundleError, match="--allow-random-weights"):
        load_backbone_of(bundles["aunet"], spec, allow_random_weights=False)
    copy = tmp_path / "tampered"
    shutil.copytree(bundles["au_fan"], copy)
    data = bytearray((copy / "head.pt").read_bytes())
    data[-100] ^= 1
    (copy / "head.pt").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not hold the bytes"):
        load_head_of(copy, read_spec(copy))


def test_video_table_matches_openface_layout_and_the_model(bundles, capsys, tmp_path):
    code, out, _ = _predict(capsys, bundles["au_fan"], tmp_path, MEDIA / "videos" / "single_face.mp4")
    assert code == 0 and "UNTRAINED BACKBONE" in out
    text = (tmp_path / "single_face.csv").read_text()
    assert text.startswith("frame, face_id, timestamp, confidence, success, pose_Tx,")
    df = _read(tmp_path / "single_face.csv")
    aus = read_spec(bundles["au_fan"]).aus
    cols = list(df.columns)
    assert cols.index("AU24_c") < cols.index("AU01_p") and cols[-1] == "untrained_backbone"
    assert len(df) == 72 and list(df.frame) == list(range(1, 73)) and (df.success == 1).all()
    fps = video_fps(MEDIA / "videos" / "single_face.mp4")
    np.testing.assert_allclose(df.timestamp, np.round((df.frame - 1) / fps, 3))
    assert (tmp_path / "single_face_timeline.png").stat().st_size > 0
    feats, head = _by_hand(bundles["au_fan"], {10})  # the same model by hand on frame 10
    with torch.no_grad():
        want = torch.sigmoid(head(feats[10]))[0].numpy()
    np.testing.assert_allclose(df.loc[10, [f"{a}_p" for a in aus]].to_numpy(float), want, atol=2e-4)
    np.testing.assert_array_equal(df.loc[10, [f"{a}_c" for a in aus]].to_numpy(int), (want >= 0.5).astype(int))


def test_temporal_cached_uses_t_minus_and_plus_T_of_the_same_face(bundles, capsys, tmp_path):
    code, _, _ = _predict(capsys, bundles["aunet"], tmp_path / "c", MEDIA / "videos" / "single_face.mp4",
                          extra=["--temporal", "cached"])
    assert code == 0
    cached = _read(tmp_path / "c" / "single_face.csv")
    spec = read_spec(bundles["aunet"])
    crops, head = _by_hand(bundles["aunet"], {1, 3, 69, 71})
    p = [f"{a}_p" for a in spec.aus]
    with torch.no_grad():  # frame 1 (0-based): t - T is missing, so frame 1 itself stands in
        first = torch.sigmoid(head(crops[1], crops[1], crops[3]))[0].numpy()
        last = torch.sigmoid(head(crops[71], crops[69], crops[71]))[0].numpy()
    np.testing.assert_allclose(cached.loc[1, p].to_numpy(float), first, atol=2e-4)
    np.testing.assert_allclose(cached.loc[71, p].to_numpy(float), last, atol=2e-4)
    code, _, _ = _predict(capsys, bundles["aunet"], tmp_path / "e", MEDIA / "videos" / "single_face.mp4",
                          extra=["--temporal", "exact"])
    exact = _read(tmp_path / "e" / "single_face.csv")
    assert code == 0 and exact.shape == cached.shape
    assert not np.allclose(exact[p].to_numpy(float), cached[p].to_numpy(float))  # other crops
    code, _, _ = _predict(capsys, bundles["au_fan"], tmp_path / "s", MEDIA / "videos" / "single_face.mp4",
                          extra=["--temporal", "exact"])  # a static head: both modes agree
    code2, _, _ = _predict(capsys, bundles["au_fan"], tmp_path / "s2", MEDIA / "videos" / "single_face.mp4")
    assert _read(tmp_path / "s" / "single_face.csv").equals(_read(tmp_path / "s2" / "single_face.csv"))


def test_no_face_rows_images_folder_and_bad_inputs(bundles, capsys, tmp_path):
    (tmp_path / "in").mkdir()
    empty = tmp_path / "in" / "empty.mp4"
    empty.write_bytes(b"")
    cut = tmp_path / "in" / "cut.mp4"
    cut.write_bytes((MEDIA / "videos" / "single_face.mp4").read_bytes()[:40000])
    out = tmp_path / "out"
    code, text, err = _predict(capsys, bundles["au_fan"], out, MEDIA / "videos" / "face_noface.mov",
                               MEDIA / "images", empty, tmp_path / "missing.mp4", cut)
    assert code == 2 and "empty" in err and "missing" in err and "FAILED" in text
    df = _read(out / "face_noface.csv")
    assert len(df) == 169 and (df.success == 0).sum() >= 90
    off = df[df.success == 0]
    assert off.AU01_c.isna().all() and off.AU01_p.isna().all() and (off.confidence == 0).all()
    img = _read(out / "images.csv")
    assert list(img.columns[:4]) == ["file", "face", "confidence", "success"]
    assert set(img.file) == {"aflw-test.jpg", "grass.jpg", "multi_face.jpg", "single_face.jpg"}
    assert img.set_index("file").loc["grass.jpg", "success"] == 0
    assert not list(out.glob(".*tmp*"))  # every output written whole or not at all
    summary = json.loads((out / "face_noface.json").read_text())
    assert summary["frames"] == 169 and summary["faces_found"] == len(df[df.success == 1])
    again, text, _ = _predict(capsys, bundles["au_fan"], out, MEDIA / "videos" / "face_noface.mov",
                              extra=["--skip-existing"])
    assert again == 0 and "skipped" in text


def test_all_faces_parquet_and_aligned_crops(bundles, capsys, tmp_path):
    code, _, err = _predict(capsys, bundles["au_fan"], tmp_path, MEDIA / "images" / "multi_face.jpg",
                          MEDIA / "videos" / "single_face.mp4",
                          extra=["--faces", "all", "--format", "parquet", "--save-aligned",
                                 "--render"])
    assert code == 0, err
    assert frame_count(tmp_path / "single_face_annotated.mp4") == 72  # every frame, annotated
    assert not list(tmp_path.glob(".*tmp*"))
    img = pd.read_parquet(tmp_path / "images.parquet")
    assert sorted(img.face) == [0, 1, 2, 3, 4]
    vid = pd.read_parquet(tmp_path / "single_face.parquet")
    assert set(vid.face_id) == {0} and len(vid) == 72  # one face, one stable id
    crops = sorted((tmp_path / "single_face_aligned").glob("*.png"))
    assert len(crops) == 72 and crops[0].name == "frame_det_00_000001.png"
    assert read_image(crops[0]).shape == (64, 64, 3)


@pytest.fixture(scope="module")
def reference_clone(tmp_path_factory):
    """A folder in the reference release's layout: released-layout heads with random tensors
    (never usable as a model: they exist only in this test's temporary folder) and a FAN file
    with face-alignment's key names."""
    from pipeline.config import Backbone
    from pipeline.models.fan import FrozenFAN
    from test_reference_import import released

    root = tmp_path_factory.mktemp("AU-Net")
    (root / "checkpoints").mkdir()
    (root / "models").mkdir()
    for i, (name, n) in enumerate((("bp4d_split1", 12), ("disfa_split2", 8), ("cross_model", 15))):
        torch.save(released(n, seed=i), root / "checkpoints" / f"{name}.pth")
    torch.manual_seed(5)
    torch.save(FrozenFAN(Backbone.FAN2).state_dict(), root / "models" / "2dfan2.pth")
    return root


def test_import_reference_then_predict_matches_the_independent_forward(reference_clone, capsys,
                                                                       tmp_path):
    from pipeline.faces.align import reference_centre_transform
    from pipeline.models.fan import FrozenFAN
    from test_reference_import import reference_forward

    assert main(["import-reference", str(reference_clone), "--out", str(tmp_path / "models"),
                 "--detector-weights", str(BLAZE)]) == 0
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == ["aunet-bp4d-split1", "aunet-cross_model", "aunet-disfa-split2"]
    bundle = tmp_path / "models" / "aunet-bp4d-split1"
    spec = read_spec(bundle)
    assert spec.crop.mode.value == "reference" and spec.default_temporal.value == "exact"
    assert spec.tta_flip and spec.temporal_offset == 10 and not spec.random_weights
    assert spec.provenance["published_avg_f1"] == 65.0 and spec.provenance["test_fold"] == 1
    assert len(read_spec(tmp_path / "models" / "aunet-cross_model").aus) == 15
    # an image: every neighbour is the frame itself; no flip averaging, to compare one pass
    out = tmp_path / "out"
    code = main(["predict", str(MEDIA / "images" / "aflw-test.jpg"), "--model", str(bundle),
                 "--out", str(out), "--quiet", "--tta", "none"])
    assert code == 0, capsys.readouterr().err
    row = _read(out / "images.csv").iloc[0]
    image = read_image(MEDIA / "images" / "aflw-test.jpg")
    d = make_detector(detector_config(bundle, spec)).detect(image)
    k = int(np.argmax((d.boxes[:, 2] - d.boxes[:, 0]) * (d.boxes[:, 3] - d.boxes[:, 1])))
    crop = warp(image, reference_centre_transform(d.boxes[k], 256), 256)
    fan = FrozenFAN()
    fan.load_state_dict(torch.load(reference_clone / "models" / "2dfan2.pth", weights_only=True))
    params = torch.load(reference_clone / "checkpoints" / "bp4d_split1.pth", weights_only=True)
    with torch.no_grad():
        f = fan.freeze()(torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255).half().double()
        want = torch.sigmoid(reference_forward(params, f, f, f))[0].float().numpy()
    got = row[[f"{a}_p" for a in spec.aus]].to_numpy(float)
    np.testing.assert_allclose(got, want, atol=2e-3)
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(3)}, bad)
    code = main(["import-reference", "--head", str(bad), "--fan", str(reference_clone / "models" / "2dfan2.pth"),
                 "--aus", "1,2", "--out", str(tmp_path / "m2"), "--detector-weights", str(BLAZE)])
    assert code == 2 and "not a released AUNet head" in capsys.readouterr().err


class _CountingCapture:
    """cv2.VideoCapture that counts the frames retrieved (read or retrieve: decoded into an image)."""
    retrieved = 0

    def __init__(self, *args):
        self.cap = _REAL_CAPTURE(*args)

    def read(self, *args):
        _CountingCapture.retrieved += 1
        return self.cap.read(*args)

    def retrieve(self, *args):
        _CountingCapture.retrieved += 1
        return self.cap.retrieve(*args)

    def __getattr__(self, name):
        return getattr(self.cap, name)


_REAL_CAPTURE = cv2.VideoCapture


def test_every_n_keeps_true_neighbours_and_the_openface_columns(bundles, capsys, tmp_path, monkeypatch):
    video = MEDIA / "videos" / "face_noface.mov"
    code, _, err = _predict(capsys, bundles["aunet"], tmp_path / "all", video)
    assert code == 0, err
    full = _read(tmp_path / "all" / "face_noface.csv")  # read as OpenFace users' scripts do
    monkeypatch.setattr(cv2, "VideoCapture", _CountingCapture)
    monkeypatch.setattr(_CountingCapture, "retrieved", 0)
    code, _, err = _predict(capsys, bundles["aunet"], tmp_path / "n", video, extra=["--every", "4"])
    assert code == 0, err
    # only the sampled frames and their t -+ T neighbours are retrieved: the even ones (T = 2);
    # the others are only grabbed (face_noface.mov: 169 frames, 85 of them even)
    assert _CountingCapture.retrieved == sum(needed(i, 4, T)[1] for i in range(169)) == 85
    sub = _read(tmp_path / "n" / "face_noface.csv")
    assert list(sub.frame) == list(range(1, 170, 4))  # rows only for the sampled frames
    want = full.set_index("frame").loc[sub.frame].reset_index()
    p = [c for c in full.columns if c.endswith("_p")]
    # the temporal head read frames t -+ T of the source video, not the sampled neighbours
    pd.testing.assert_frame_equal(sub[["frame", "timestamp", "success", *p]],
                                  want[["frame", "timestamp", "success", *p]])
    pose = ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]
    marks = [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
    face, none = full[full.success == 1], full[full.success == 0]
    assert len(face) >= 60 and len(none) >= 90
    for c in pose + marks:
        assert pd.api.types.is_float_dtype(full[c]), c
    assert np.isfinite(face[pose + marks].to_numpy()).all() and none[pose + marks].isna().all().all()
    w = (face.bbox_x1 - face.bbox_x0).to_numpy()[:, None]  # landmarks lie in the crop, near the face
    xs = face[marks[:68]].to_numpy()
    assert (xs > face.bbox_x0.to_numpy()[:, None] - w).all() and (xs < face.bbox_x1.to_numpy()[:, None] + w).all()
    summary = json.loads((tmp_path / "n" / "face_noface.json").read_text())
    assert summary["every"] == 4 and summary["frames"] == len(sub) and summary["decoded"] == 169


@pytest.mark.parametrize("n_cores,threaded", [(2, False), (4, True)])
def test_decode_and_detect_run_on_their_own_thread_only_beyond_two_cores(monkeypatch, n_cores,
                                                                        threaded):
    """On 2 cores the decode/detect thread competes with the FAN's threads (docs/predict.md,
    "Runtimes"): there it is off; on more cores it is on."""
    import threading
    import types

    from pipeline.faces.types import Detections
    from pipeline.predict import predictor

    class NoFaces:
        def detect_video_batch(self, images, gate):
            return [Detections.empty() for _ in images]

    seen = []

    def frames():
        for i in range(3):
            seen.append(threading.current_thread().name)
            yield i, np.zeros((8, 8, 3), np.uint8)

    monkeypatch.setattr(predictor, "cores", lambda: n_cores)
    eng = types.SimpleNamespace(T=0, is_temporal=False, temporal=TemporalMode.CACHED, batch=8)
    rows = list(predictor.predict_stream(frames(), eng, NoFaces()))
    assert [r.success for r in rows] == [False] * 3
    assert (set(seen) == {"decode-detect"}) is threaded and len(seen) == 3
