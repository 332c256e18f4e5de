"""Detector quality: RetinaFace's network and decoding, BlazeFace's tile pyramid and defaults, the
temporal rule. Geometry tests need nothing; media tests read ../shared (skipped where absent)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.faces.blazeface import MAX_FACE_PER_TILE, _keep_in_tile, pyramid_tiles
from pipeline.config import DetectorKind, FacesConfig
from pipeline.faces.factory import DEFAULT_MIN_SCORE, make_detector, min_score
from pipeline.faces.types import Detections, Detector, DetectorError
from pipeline.faces.weights import resolve_weights
from benchmarks.detect_eval import (detect_all, face_photo, found_face,
                                  persist_blocks, place_face, video_truth)
from pipeline.faces.persist import filter_stream, persistent
from pipeline.faces.retinaface import MIN_SIZES, STEPS, RetinaFaceNet, decode, load_net, priors
from pipeline.video import iter_video, read_image
from stages.faces_frames import process_rows

RETINA = "weights/retinaface/mobilenet0.25_Final.pth"
FRONT = "weights/blazeface/blazeface.pth"


def _dets(boxes, scores=None) -> Detections:
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    s = np.ones(len(b), np.float32) if scores is None else np.asarray(scores, np.float32)
    return Detections(b, np.full((len(b), 5, 2), np.nan, np.float32), s)


# -- RetinaFace: network and decoding (no media) -------------------------------------------------
def test_priors_follow_the_heads_order():
    pri = priors(100, 70)  # feature maps 13x9, 7x5, 4x3 (ceil), two sizes per cell
    assert len(pri) == 2 * (13 * 9 + 7 * 5 + 4 * 3)
    np.testing.assert_allclose(pri[:4], [[4, 4, 16], [4, 4, 32], [12, 4, 16], [12, 4, 32]])
    last = pri[-1]  # stride 32, last cell (row 3, col 2), larger size
    np.testing.assert_allclose(last, [2.5 * STEPS[2], 3.5 * STEPS[2], MIN_SIZES[2][1]])
    net = RetinaFaceNet().eval()
    with torch.no_grad():
        loc, prob, ldm = net(torch.zeros(2, 3, 100, 70))
    assert loc.shape == (2, len(pri), 4) and prob.shape == (2, len(pri)) and ldm.shape == (2, len(pri), 10)


def test_decode_zero_deltas_give_the_anchor_and_scale_with_the_variances():
    pri = np.array([[50.0, 40.0, 32.0]])
    boxes, pts = decode(np.zeros((1, 4)), np.zeros((1, 10)), pri)
    np.testing.assert_allclose(boxes, [[34, 24, 66, 56]])
    np.testing.assert_allclose(pts, np.tile([[50.0, 40.0]], (1, 5, 1)))
    boxes, pts = decode(np.array([[1.0, -1.0, 0.0, np.log(2) / 0.2]]), np.full((1, 10), 1.0), pri)
    np.testing.assert_allclose(boxes, [[53.2 - 16, 36.8 - 32, 53.2 + 16, 36.8 + 32]])  # 0.1 x 32
    np.testing.assert_allclose(pts[0, 0], [53.2, 43.2])


def test_retinaface_weights_errors_name_the_file_and_the_setting(tmp_path):
    with pytest.raises(DetectorError, match="faces.detector_weights is not set"):
        make_detector(FacesConfig(detector="retinaface"))
    with pytest.raises(DetectorError, match="file not found"):
        make_detector(FacesConfig(detector="retinaface", detector_weights=tmp_path / "none.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DetectorError, match="junk.pth"):
        load_net(junk)
    partial = tmp_path / "partial.pth"  # keys of the wrong model: strict loading refuses it
    state = {f"module.{k}": v for k, v in RetinaFaceNet().state_dict().items() if "LandmarkHead" not in k}
    torch.save(state, partial)
    with pytest.raises(DetectorError, match="(?s)partial.pth.*Missing key"):
        load_net(partial)
    whole = tmp_path / "whole.pth"  # a DataParallel `module.` prefix is stripped
    torch.save({f"module.{k}": v for k, v in RetinaFaceNet().state_dict().items()}, whole)
    assert isinstance(load_net(whole), RetinaFaceNet)


def test_default_scores_are_per_detector_and_overridable():
    assert min_score(FacesConfig()) == DEFAULT_MIN_SCORE[DetectorKind.BLAZEFACE]
    assert min_score(FacesConfig(detector="retinaface")) == DEFAULT_MIN_SCORE[DetectorKind.RETINAFACE]
    assert min_score(FacesConfig(min_score=0.3)) == 0.3


def test_pyramid_needs_the_other_blazeface_model_beside_the_weights(tmp_path):
    for name in ("blazeface.pth", "anchors.npy"):
        (tmp_path / name).write_bytes(b"")
    cfg = FacesConfig(detector_weights=tmp_path / "blazeface.pth")
    with pytest.raises(DetectorError, match="verifier_weights: file not found.*blazefaceback.pth"):
        resolve_weights(cfg)
    off = FacesConfig(detector_weights=tmp_path / "blazeface.pth", tile_pyramid="off")
    assert set(resolve_weights(off)) == {"weights", "anchors"}
    for name in ("blazefaceback.pth", "anchorsback.npy"):
        (tmp_path / name).write_bytes(b"")
    files = resolve_weights(cfg)
    assert files["verifier_weights"] == tmp_path / "blazefaceback.pth"
    assert files["verifier_anchors"] == tmp_path / "anchorsback.npy"


# -- BlazeFace tiles (no media) --------------------------------------------------------------------
def test_pyramid_tiles_cover_each_level_with_half_overlap():
    tiles = pyramid_tiles(540, 960, levels=2, min_side=128)
    level1 = [t for t in tiles if t[3] == 1]
    assert len([t for t in tiles if t[3] == 0]) == 3 and {t[2] for t in level1} == {270}
    xs, ys = sorted({t[0] for t in level1}), sorted({t[1] for t in level1})
    assert xs[0] == 0 and xs[-1] + 270 == 960 and ys[0] == 0 and ys[-1] + 270 == 540
    assert max(np.diff(xs)) <= 135 and max(np.diff(ys)) <= 135  # any face <= 135 px fits whole
    assert {t[3] for t in pyramid_tiles(200, 300, levels=3, min_side=128)} == {0}  # 100 < 128 px


def test_finer_tiles_keep_only_small_uncut_faces():
    rows = np.zeros((4, 15))
    rows[:, :4] = [[300, 300, 350, 350],  # inside the tile, small: kept
                   [250, 300, 300, 350],  # crosses the tile's left edge (x0 = 270): cut
                   [300, 300, 300 + MAX_FACE_PER_TILE * 270 + 5, 350],  # too big for the tile
                   [0, 0, 40, 40]]  # in a corner tile, at the image border: kept there
    assert _keep_in_tile(rows[:3], 270, 270, 270, 540, 960).tolist() == [True, False, False]
    assert _keep_in_tile(rows[3:], 0, 0, 270, 540, 960).tolist() == [True]


# -- temporal rule (no media) ----------------------------------------------------------------------
def test_persistent_keeps_runs_of_n_rows_and_drops_flicker():
    face, other = _dets([0, 0, 10, 10]), _dets([50, 50, 60, 60])
    both = _dets([[0, 0, 10, 10], [50, 50, 60, 60]])
    assert len(persistent(both, [face, face], [], 3)) == 1  # the face ran 3 rows, the other 1
    assert len(persistent(face, [face], [face], 3)) == 1  # centred run
    assert len(persistent(face, [other, face], [face], 3)) == 0  # the row before breaks the run
    assert len(persistent(face, [None], [face, face], 3)) == 1  # unreadable frame ends a run


def test_filter_stream_matches_the_per_block_rule_and_leaves_images_alone():
    rng = np.random.default_rng(0)
    seq = [_dets([0, 0, 10, 10]) if rng.random() < 0.6 else Detections.empty() for _ in range(40)]
    items = [(i, "v.mp4" if i < 30 else None, d) for i, d in enumerate(seq)]
    out = list(filter_stream(items, dets=lambda x: x[2], video=lambda x: x[1],
                             replace=lambda x, d: (x[0], x[1], d), n=3))
    expect = persist_blocks(seq[:30], 3, block=30)
    assert [len(o[2]) for o in out[:30]] == [len(e) for e in expect]
    assert [len(o[2]) for o in out[30:]] == [len(d) for d in seq[30:]]  # images: unchanged


class _Scripted(Detector):
    """Returns the scripted detections frame after frame (no network)."""
    kind = DetectorKind.BLAZEFACE
    files: dict = {}

    def __init__(self, script):
        self.script = iter(script)

    def detect_batch(self, images):
        return [next(self.script) for _ in images]


@pytest.mark.parametrize("rule,kept", [("none", [0, 1, 2, 4, 6, 7]), ("persist", [0, 1, 2])])
def test_faces_stage_applies_the_temporal_rule_to_video_rows(tmp_path, write_video, rule, kept):
    video = write_video(tmp_path / "v.avi", 8)
    face, none = _dets([2, 2, 30, 30]), Detections.empty()
    script = [face, face, face, none, face, none, face, face]  # a run of 3, a flicker, a run of 2
    rows = [{"video_path": str(video), "video_frame": f, "video_id": "v"} for f in range(8)]
    cfg = FacesConfig(temporal=rule, persist_frames=3, size=32, min_face_px=8)
    data, errors, _ = process_rows(rows, cfg, _Scripted(script))
    assert errors == [] and np.flatnonzero(data["success"]).tolist() == kept


# -- real media ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def front(shared_dir, one_thread_module):
    return make_detector(FacesConfig(detector_weights=shared_dir / FRONT))


@pytest.fixture(scope="module")
def one_thread_module():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_face_noface_truth_fixture_matches_the_video(shared_dir):
    n = sum(1 for _ in iter_video(shared_dir / "media/videos/face_noface.mov"))
    truth = video_truth("face_noface.mov", n)
    assert n == 169 and truth[:72].all() and not truth[72:].any()


def test_default_blazeface_gives_no_face_on_the_title_frames(shared_dir, front):
    """The old default (score >= 0.5, no pyramid) accepted title frames 96, 97, 142 and 154 of
    face_noface.mov (0.62-0.74); the defaults accept none of them nor every third title frame
    (all of them in benchmarks/bench_detect.py)."""
    wanted = set(range(72, 169, 3)) | {96, 97, 142, 154}
    frames = dict(iter_video(shared_dir / "media/videos/face_noface.mov", wanted))
    found = detect_all(front, list(frames.values()))
    assert [f for f, d in zip(frames, found) if len(d)] == []


def test_default_blazeface_gives_no_face_on_no_face_video(shared_dir, front):
    """Old default: false faces on frames 17, 22, 23 (0.54-0.61); now none (every third frame and
    those; all 95 in the benchmark)."""
    video = shared_dir / "media/videos/no_face.mp4"
    frames = [f for i, f in iter_video(video) if i % 3 == 0 or i in (17, 23)]
    assert sum(len(d) > 0 for d in detect_all(front, frames)) == 0


def test_pyramid_finds_a_face_of_a_tenth_of_the_short_side_on_a_big_canvas(shared_dir, front):
    """A 2560x1912 canvas (the reported photo's size): a real face photo (frontal; tilted back)
    scaled so the face is 10% of the short side (191 px), on the grass texture, off-centre. The
    turned three-quarter face (einstein) is a measured limit instead: found at 15%, not reliably
    below or at 20-30% (docs/faces.md)."""
    grass = read_image(shared_dir / "media/images/grass.jpg")
    import cv2
    bg = cv2.resize(grass, (2560, 1912))
    for name in ("single_face.jpg", "aflw-test.jpg"):
        photo, face = face_photo(shared_dir, name)
        canvas, box = place_face(bg, photo, face, 0.10, (0.2, 0.7))
        found = front.detect(canvas)
        assert found_face(found, box), (name, found.boxes, box)
        assert len(found) == 1  # and nothing else on the grass


def test_retinaface_loads_the_shared_file_strictly(shared_dir):
    det = make_detector(FacesConfig(detector="retinaface", detector_weights=shared_dir / RETINA))
    found = det.detect(read_image(shared_dir / "media/images/single_face.jpg"))
    assert len(found) >= 1 and found.scores.max() > 0.9  # it does see a face there


@pytest.mark.xfail(strict=True, reason="the shared mobilenet0.25_Final.pth does not decode as the "
                   "release documents (variances 0.1/0.2): its best anchors on one face disagree "
                   "by ~70 px; see docs/faces.md 'Detectors on real footage'")
def test_retinaface_anchors_agree_on_one_face(shared_dir):
    net = load_net(shared_dir / RETINA)
    img = read_image(shared_dir / "media/images/single_face.jpg")
    x = torch.from_numpy(img[..., ::-1].astype(np.float32) - np.float32((104, 117, 123)))
    with torch.no_grad():
        loc, prob, ldm = net(x.permute(2, 0, 1)[None].contiguous())
    best = np.argsort(-prob[0].numpy())[:10]
    boxes, _ = decode(loc[0].numpy()[best].astype(np.float64), ldm[0].numpy()[best].astype(np.float64),
                      priors(*img.shape[:2])[best])
    assert boxes.std(axis=0).max() < 10.0, boxes.round()


@pytest.mark.xfail(strict=True, reason="the shared RetinaFace file: see the test above")
def test_retinaface_finds_the_media_faces_with_keypoints_in_order(shared_dir):
    det = make_detector(FacesConfig(detector="retinaface", detector_weights=shared_dir / RETINA))
    for name, n in [("aflw-test.jpg", 1), ("single_face.jpg", 1), ("multi_face.jpg", 5), ("grass.jpg", 0)]:
        found = det.detect(read_image(shared_dir / "media/images" / name))
        assert len(found) == n, (name, len(found))
        for b, k in zip(found.boxes, found.keypoints):
            assert (k[:, 0] > b[0]).all() and (k[:, 0] < b[2]).all() and (k[:, 1] > b[1]).all()
            assert k[0, 0] < k[1, 0] and k[3, 0] < k[4, 0]  # image-left eye / mouth corner first
    frames = [f for i, f in iter_video(shared_dir / "media/videos/no_face.mp4") if i % 10 == 0]
    assert sum(len(d) > 0 for d in detect_all(det, frames)) == 0
