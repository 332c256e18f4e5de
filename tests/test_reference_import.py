"""Importing the paper's released AUNet head files, and the reference's test-time crop geometry.

The released files cannot be downloaded here, so the tests write files in exactly their layout
(names, order, shapes, from the description in reference-implementation.md, typed out here
independently of pipeline/models/reference.py) with random tensors, each drawn from its own seed.
The imported head is checked against a forward pass written below with torch.nn.functional only,
reading the file's tensors by their released names: a loader that put a tensor into the wrong
layer, even one of the same shape, would give different logits.
"""
from __future__ import annotations

import functools
import math
from collections import OrderedDict

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.faces.align import (AlignError, neighbour_transform, reference_centre_transform,
                            transform_points, warp)
from pipeline.models import reference
from pipeline.models.heads import StaticHead, TDNHead, n_trainable
from pipeline.models.reference import (RELEASED_LAYOUT, ReferenceFormatError, load_released_file,
                                       load_released_head, read_released_file,
                                       released_state_dict)

pytestmark = pytest.mark.usefixtures("one_thread")

C, S = 768, 16  # real channels, small maps
ALPHA, BETA = 0.9, 0.1  # the reference's test-time weights
BN_EPS = 1e-5  # PyTorch's BatchNorm default, as in the reference
BLOCKS = ("ConvNet_1.0", "ConvNet_diff.0", "ConvNet_2.0", "ConvNet_2.2", "ConvNet_2.4")


# -- the released layout, typed from its description -------------------------------------------
def _bn(prefix: str, c: int) -> list[tuple[str, tuple]]:
    return [(f"{prefix}.{n}", (c,)) for n in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{prefix}.num_batches_tracked", ())]


def _conv_block(p: str) -> list[tuple[str, tuple]]:
    """face-alignment's ConvBlock(256, 256): 3x3 convs without bias, no downsample branch."""
    return (_bn(f"{p}.bn1", 256) + [(f"{p}.conv1.weight", (128, 256, 3, 3))]
            + _bn(f"{p}.bn2", 128) + [(f"{p}.conv2.weight", (64, 128, 3, 3))]
            + _bn(f"{p}.bn3", 64) + [(f"{p}.conv3.weight", (64, 64, 3, 3))])


def released_spec(n_aus: int) -> list[tuple[str, tuple]]:
    spec = [("conv1x1.weight", (256, 768, 1, 1)), ("conv1x1.bias", (256,))]
    for b in BLOCKS:
        spec += _conv_block(b)
    spec += [("predictor.0.weight", (128, 256)), ("predictor.0.bias", (128,))]
    spec += _bn("predictor.1", 128)
    spec += [("predictor.3.weight", (n_aus, 128)), ("predictor.3.bias", (n_aus,))]
    spec += [("conv1x1_diff.weight", (256, 1536, 1, 1)), ("conv1x1_diff.bias", (256,))]
    return spec


def _value(key: str, shape: tuple, seed: int) -> torch.Tensor:
    """A float32 tensor from its own seed, scaled so activations stay O(1) through the head."""
    g = torch.Generator().manual_seed(seed)
    leaf = key.rsplit(".", 1)[1]
    if leaf == "num_batches_tracked":
        return torch.tensor(seed % 1000 + 1, dtype=torch.long)
    if leaf in ("weight", "running_var") and len(shape) == 1:  # BN scale, variance: positive
        return 0.5 + torch.rand(shape, generator=g)
    if len(shape) == 1:  # biases, BN shifts, running means
        return 0.1 * torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))  # conv / linear


@functools.lru_cache(maxsize=None)
def _released(n_aus: int, seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict((k, _value(k, s, seed * 1000 + i))
                       for i, (k, s) in enumerate(released_spec(n_aus)))


def released(n_aus: int = 12, seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict(_released(n_aus, seed))  # a copy the test may reorder or rename


# -- the forward pass, from the description, on the file's tensors by name -----------------------
def _bn_relu(x, p, prefix):
    x = F.batch_norm(x, p[f"{prefix}.running_mean"].double(), p[f"{prefix}.running_var"].double(),
                     p[f"{prefix}.weight"].double(), p[f"{prefix}.bias"].double(),
                     training=False, eps=BN_EPS)
    return F.relu(x)


def _conv_block_forward(x, p, b):
    out1 = F.conv2d(_bn_relu(x, p, f"{b}.bn1"), p[f"{b}.conv1.weight"].double(), padding=1)
    out2 = F.conv2d(_bn_relu(out1, p, f"{b}.bn2"), p[f"{b}.conv2.weight"].double(), padding=1)
    out3 = F.conv2d(_bn_relu(out2, p, f"{b}.bn3"), p[f"{b}.conv3.weight"].double(), padding=1)
    return torch.cat((out1, out2, out3), dim=1) + x  # in == out channels: identity residual


def reference_forward(p, f_t, f_prev, f_next) -> torch.Tensor:
    w = {k: v.double() for k, v in p.items() if v.is_floating_point()}
    d = torch.cat((f_t - f_prev, f_next - f_t), dim=1)  # (B, 1536, S, S)
    d = F.conv2d(F.avg_pool2d(d, 2), w["conv1x1_diff.weight"], w["conv1x1_diff.bias"])  # S/2
    x = F.conv2d(f_t, w["conv1x1.weight"], w["conv1x1.bias"])  # (B, 256, S, S)
    x = ALPHA * x + BETA * F.interpolate(d, size=x.shape[-2:], mode="nearest")
    x = F.max_pool2d(_conv_block_forward(x, p, "ConvNet_1.0"), 2)  # S/2
    d = F.max_pool2d(_conv_block_forward(d, p, "ConvNet_diff.0"), 2)  # S/4
    x = ALPHA * x + BETA * F.interpolate(d, size=x.shape[-2:], mode="nearest")
    for b in BLOCKS[2:]:
        x = F.max_pool2d(_conv_block_forward(x, p, b), 2)  # S/4, S/8, S/16
    g = x.mean(dim=(2, 3))  # (B, 256)
    h = F.linear(g, w["predictor.0.weight"], w["predictor.0.bias"])
    h = F.relu(F.batch_norm(h, w["predictor.1.running_mean"], w["predictor.1.running_var"],
                            w["predictor.1.weight"], w["predictor.1.bias"], training=False,
                            eps=BN_EPS))
    return F.linear(h, w["predictor.3.weight"], w["predictor.3.bias"])  # (B, n_AU)


@functools.lru_cache(maxsize=None)
def _triplet() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(123)
    return tuple(torch.randn(2, C, S, S, generator=g, dtype=torch.float64) for _ in range(3))


def head_logits(head: TDNHead) -> torch.Tensor:
    assert not head.training
    with torch.no_grad():
        return head.double()(*_triplet())


def assert_matches_reference(head: TDNHead, p) -> None:
    want = reference_forward(p, *_triplet())
    assert want.abs().max() > 0.1  # the check is not vacuous: logits are not all ~0
    torch.testing.assert_close(head_logits(head), want, rtol=1e-9, atol=1e-10)


def _save(tmp_path, obj, name="head.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


# -- tests: layout and import ------------------------------------------------------------------
def test_layout_is_the_released_one():
    assert [r for r, _ in RELEASED_LAYOUT] == [k for k, _ in released_spec(12)]
    assert len(RELEASED_LAYOUT) == 103
    assert sorted(o for _, o in RELEASED_LAYOUT) == sorted(TDNHead(12).state_dict())
    head = TDNHead(12)
    exported = released_state_dict(head)
    assert [(k, tuple(v.shape)) for k, v in exported.items()] == released_spec(12)


def test_imported_head_matches_an_independent_forward(tmp_path):
    p = released(12)
    head = load_released_file(_save(tmp_path, p))
    assert isinstance(head, TDNHead) and not head.training
    assert (head.a, head.b) == (ALPHA, BETA)
    assert_matches_reference(head, p)


@pytest.mark.parametrize("rename", [
    # the reference's older training code: conv1x1_input_emo_2, emo_net_2, emo_fc_2
    {"conv1x1": "conv1x1_input_emo_2", "ConvNet_1": "emo_net_2_a", "ConvNet_diff": "emo_net_2_diff",
     "ConvNet_2": "emo_net_2", "predictor": "emo_fc_2", "conv1x1_diff": "conv1x1_diff_emo_2"},
    None,  # names carrying nothing at all: p000, p001, ...
])
def test_other_names_load_identically_by_position(tmp_path, rename):
    p = released(12)
    if rename:
        q = OrderedDict()
        for k, v in p.items():
            module, rest = k.split(".", 1)
            q[f"{rename[module]}.{rest}"] = v
    else:
        q = OrderedDict((f"p{i:03d}", v) for i, v in enumerate(p.values()))
    assert not set(q) & set(p)
    head = load_released_head(read_released_file(_save(tmp_path, q)))
    assert_matches_reference(head, p)


def test_wrapped_and_module_prefixed_files(tmp_path):
    p = released(12)
    plain = load_released_file(_save(tmp_path, p, "plain.pth")).state_dict()
    prefixed = OrderedDict(("module." + k, v) for k, v in p.items())
    for i, obj in enumerate([{"state_dict": p}, prefixed, {"state_dict": prefixed}]):
        got = read_released_file(_save(tmp_path, obj, f"w{i}.pth"))
        assert list(got) == list(p)
        loaded = load_released_head(got).state_dict()
        assert all(torch.equal(loaded[k], plain[k]) for k in plain)


def test_swapped_blocks_change_the_logits(tmp_path, monkeypatch):
    """Same-shaped blocks hold different tensors, so the independent forward catches swaps."""
    p = released(12)
    swapped = OrderedDict(p)
    for k in [k for k in p if k.startswith("ConvNet_1.0.")]:
        other = k.replace("ConvNet_1.0.", "ConvNet_diff.0.")
        swapped[k], swapped[other] = p[other], p[k]
    head = load_released_head(swapped)  # shapes fit: it loads
    assert_matches_reference(head, swapped)
    assert not torch.allclose(head_logits(head), reference_forward(p, *_triplet()), atol=1e-3)

    # a loader whose layout swapped the two blocks fails the independent check
    def swap(ours: str) -> str:
        for a, b in (("stage1.", "stage1_diff."), ("stage1_diff.", "stage1.")):
            if ours.startswith(a):
                return b + ours[len(a):]
        return ours

    bad = tuple((r, swap(o)) for r, o in RELEASED_LAYOUT)
    assert bad != RELEASED_LAYOUT
    monkeypatch.setattr(reference, "RELEASED_LAYOUT", bad)
    with pytest.raises(AssertionError):
        assert_matches_reference(load_released_head(p), p)


def test_wrong_shape_names_position_and_both_keys():
    p = released(12)
    keys = list(p)
    assert keys[7] == "ConvNet_1.0.conv1.weight"
    p[keys[7]] = torch.zeros(128, 256, 1, 1)
    with pytest.raises(ReferenceFormatError) as e:
        load_released_head(p, source="bp4d_split1.pth")
    msg = str(e.value)
    assert "bp4d_split1.pth" in msg and "position 7:" in msg and "\n" not in msg
    assert "file 'ConvNet_1.0.conv1.weight' (128, 256, 1, 1)" in msg
    assert "expected 'ConvNet_1.0.conv1.weight' (128, 256, 3, 3) (our stage1.0.conv1.weight)" in msg
    assert "entries" not in msg.split("first mismatches")[0]  # the count is right: not mentioned


def test_wrong_entry_count_is_named():
    p = released(12)
    short = OrderedDict(list(p.items())[:-1])
    with pytest.raises(ReferenceFormatError, match=r"it has 102 entries, expected 103; .*"
                       r"position 102: file has no entry, expected 'conv1x1_diff.bias' \(256,\)"):
        load_released_head(short)
    long = OrderedDict(p, extra=torch.zeros(3))
    with pytest.raises(ReferenceFormatError, match=r"104 entries.*position 103: file 'extra' "
                       r"\(3,\), expected no entry"):
        load_released_head(long)


def test_our_own_checkpoint_and_a_wrong_au_count_are_refused():
    with pytest.raises(ReferenceFormatError, match=r"position 2: file 'reduce_diff.weight' "
                       r"\(256, 1536, 1, 1\), expected 'ConvNet_1.0.bn1.weight' \(256,\)"):
        load_released_head(TDNHead(12).state_dict())
    with pytest.raises(ReferenceFormatError, match=r"position 99: file 'predictor.3.weight' "
                       r"\(12, 128\), expected 'predictor.3.weight' \(8, 128\)"):
        load_released_head(released(12), n_aus=8)
    bad = released(12)
    bad["predictor.3.weight"] = torch.zeros(12)
    with pytest.raises(ReferenceFormatError, match=r"position 99: file 'predictor.3.weight' "
                       r"\(12,\), expected 'predictor.3.weight' \(n_AU, 128\)"):
        load_released_head(bad)  # the AU count cannot be read from a 1-D "Linear"
    bad = released(12)
    bad["predictor.3.bias"] = torch.zeros(8)
    with pytest.raises(ReferenceFormatError, match=r"position 100: file 'predictor.3.bias' "
                       r"\(8,\), expected 'predictor.3.bias' \(12,\)"):
        load_released_head(bad)  # weight and bias disagree on the AU count
    with pytest.raises(ValueError, match="at least 1"):
        load_released_head(released(12), n_aus=0)


@pytest.mark.parametrize("n_aus,expected", [(12, 2_657_036), (8, 2_656_520), (15, 2_657_423)])
def test_released_sizes(tmp_path, n_aus, expected):
    p = released(n_aus, seed=n_aus)
    trainable = sum(v.numel() for k, v in p.items()
                    if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert trainable == expected  # the file's own count, from the description
    head = load_released_file(_save(tmp_path, p))
    assert n_trainable(head) == expected and head.classifier.fc2.out_features == n_aus
    assert_matches_reference(head, p)


def test_export_import_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    head = TDNHead(8)
    with torch.no_grad():  # non-default buffers, so that a lost BN statistic shows
        for name, buf in head.named_buffers():
            buf.copy_(torch.randint(1, 50, ()) if buf.dim() == 0 else 0.5 + torch.rand_like(buf))
    exported = released_state_dict(head)
    assert list(exported) == [k for k, _ in released_spec(8)]
    back = load_released_file(_save(tmp_path, exported))
    own, got = head.state_dict(), back.state_dict()
    assert all(torch.equal(own[k], got[k]) and own[k].dtype == got[k].dtype for k in own)
    again = released_state_dict(back)
    assert all(torch.equal(again[k], exported[k]) for k in exported)


def test_released_layout_is_for_the_temporal_head_only():
    with pytest.raises(TypeError, match="StaticHead"):
        released_state_dict(StaticHead(12))


def test_unreadable_files_are_named(tmp_path):
    for i, obj in enumerate([[torch.zeros(1)], {"a": 1}, {}, {"state_dict": {"w": "x"}}]):
        path = _save(tmp_path, obj, f"bad{i}.pth")
        with pytest.raises(ReferenceFormatError, match=rf"bad{i}\.pth: not a head state dict"):
            read_released_file(path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ReferenceFormatError, match=r"junk\.pth: cannot read"):
        read_released_file(junk)
    with pytest.raises(ReferenceFormatError, match="not found"):
        read_released_file(tmp_path / "missing.pth")


# -- the reference's crop geometry ---------------------------------------------------------------
def test_reference_centre_transform_matrix():
    box = np.array([100.0, 60.0, 220.0, 200.0])  # w 120, h 140: side (120 + 140) * 200 / 260 = 200
    m = reference_centre_transform(box, 256)
    scale = 256 / 200
    np.testing.assert_allclose(m[:, :2], [[scale, 0], [0, scale]])  # no rotation, square pixels
    np.testing.assert_allclose(transform_points([[160.0, 130.0]], m), [[128, 128]])  # centre
    # the crop's edges are the square of side 200 around the centre
    np.testing.assert_allclose(transform_points([[60.0, 30.0], [260.0, 230.0]], m),
                               [[0, 0], [256, 256]], atol=1e-9)
    # the reference's own formula: scale = (w + h) / 260, h_px = 200 * scale,
    # t = [[res / h_px, 0, res * (0.5 - cx / h_px)], [0, res / h_px, res * (0.5 - cy / h_px)]]
    h_px = 200 * (120 + 140) / 260
    np.testing.assert_allclose(m, [[256 / h_px, 0, 256 * (0.5 - 160 / h_px)],
                                   [0, 256 / h_px, 256 * (0.5 - 130 / h_px)]], atol=1e-9)
    np.testing.assert_allclose(reference_centre_transform(box, 128)[:, :2], np.eye(2) * 128 / 200)
    for bad in ([0, 0, 0, 10], [5, 5, 1, 9], [0, 0, np.nan, 10]):
        with pytest.raises(AlignError):
            reference_centre_transform(np.array(bad, float))


def test_reference_centre_crop_puts_the_box_where_expected():
    box = np.array([150.0, 90.0, 270.0, 230.0])  # side 200 px -> 256 px: scale 1.28
    img = np.zeros((400, 480, 3), np.uint8)
    img[90:230, 150:270] = 255  # the box's pixels (x0 <= x < x1)
    crop = warp(img, reference_centre_transform(box, 256), 256)
    ys, xs = np.nonzero(crop[..., 0] > 127)
    # box corners land at 128 +- 1.28 * (60, 70): x 51.2 .. 204.8, y 38.4 .. 217.6, to within
    # a pixel and a half (pixel-centre conventions, bilinear edges)
    assert abs(xs.min() - 51.2) <= 1.5 and abs(xs.max() + 1 - 204.8) <= 1.5
    assert abs(ys.min() - 38.4) <= 1.5 and abs(ys.max() + 1 - 217.6) <= 1.5


def _rot(deg: float, scale: float, t: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), t[0]],
                     [scale * np.sin(a), scale * np.cos(a), t[1]]])


def test_neighbour_transform_maps_onto_the_centre_keypoints():
    kp_centre = np.array([[180, 140], [240, 142], [210, 175], [185, 205], [236, 207]], float)
    m_centre = reference_centre_transform(np.array([150.0, 90.0, 270.0, 240.0]), 256)
    kp_target = transform_points(kp_centre, m_centre)  # the centre's points in crop pixels
    motion = _rot(12.0, 1.1, (-25.0, 14.0))  # the head moved between frames t and t + T
    kp_nb = transform_points(kp_centre, motion)
    m = neighbour_transform(kp_nb, kp_target)
    np.testing.assert_allclose(transform_points(kp_nb, m), kp_target, atol=1e-9)
    inv_motion = np.linalg.inv(np.vstack([motion, [0, 0, 1]]))
    np.testing.assert_allclose(m, m_centre @ inv_motion, atol=1e-9)  # crop(centre) o motion^-1

    # content: dots at the neighbour's eyes land on the centre's eyes in the crop
    img = np.zeros((400, 480, 3), np.uint8)
    for x, y in kp_nb[:2]:
        cv2.circle(img, (int(round(x)), int(round(y))), 5, (255, 255, 255), -1)
    crop = warp(img, m, 256)
    for x, y in kp_target[:2]:
        win = crop[int(y) - 12:int(y) + 13, int(x) - 12:int(x) + 13, 0].astype(float)
        ys, xs = np.nonzero(win > 128)
        assert np.linalg.norm([xs.mean() + int(x) - 12 - x, ys.mean() + int(y) - 12 - y]) < 1.5
