"""FrozenFAN: taps against a plain forward of the same modules, variants, strict weight loading.

FAN is fully convolutional, so most tests run on 64x64 inputs (16x16 features) to stay fast.
"""
from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
from face_alignment.models.fan import FAN

from pipeline.config import Backbone, FeaturesConfig
from pipeline.models.fan import FrozenFAN, WeightsError, load_backbone, load_state

torch.set_num_threads(1)


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics, so that eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def reference_forward(net: torch.nn.Module, x: torch.Tensor, pool) -> dict[str, torch.Tensor]:
    """Written out step by step from reference-implementation.md, independent of FrozenFAN."""
    y = F.relu(net.bn1(net.conv1(x)))
    y = pool(net.conv2(y), 2, stride=2)
    y = net.conv3(y)
    f_l = net.conv4(y)
    s0 = F.relu(net.bn_end0(net.conv_last0(net.top_m_0(net.m0(f_l)))))
    h1 = net.bl0(s0)
    prev = f_l + h1 + net.al0(net.l0(s0))
    h2 = F.relu(net.bn_end1(net.conv_last1(net.top_m_1(net.m1(prev)))))
    heat = net.l1(h2)
    a = heat.sum(dim=1, keepdim=True)
    return {"F_l": f_l, "H1": h1, "H2": h2, "heatmaps": heat, "attention": a,
            "feature": torch.cat([f_l, h1 * a, h2 * a], dim=1)}


@pytest.fixture(scope="module")
def fan2() -> FrozenFAN:
    torch.manual_seed(0)
    m = FrozenFAN(Backbone.FAN2)
    _randomise_bn(m)
    return m.freeze()


@pytest.fixture(scope="module")
def x64() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_taps_match_plain_forward(fan2, x64):
    with torch.inference_mode():
        got = fan2.taps(x64)
        feat = fan2(x64)
        ref = reference_forward(fan2, x64, F.max_pool2d)
    shapes = {"F_l": 256, "H1": 256, "H2": 256, "heatmaps": 68, "attention": 1}
    for name, c in shapes.items():
        assert got[name].shape == (2, c, 16, 16), name
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-5)
    assert feat.shape == (2, 768, 16, 16)
    torch.testing.assert_close(feat, ref["feature"], rtol=1e-5, atol=1e-5)
    # the F_l block of the feature is unmasked; the others are H * A
    torch.testing.assert_close(feat[:, :256], got["F_l"])
    torch.testing.assert_close(feat[:, 512:], got["H2"] * got["attention"])


def test_stem_pooling_differs_between_variants(fan2, x64):
    fan4 = FrozenFAN(Backbone.FAN4)
    fan4.load_state_dict(fan2.state_dict())
    fan4.freeze()
    with torch.inference_mode():
        ref_avg = reference_forward(fan4, x64, F.avg_pool2d)["feature"]
        torch.testing.assert_close(fan4(x64), ref_avg, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(fan2(x64), fan4(x64))


def test_fan4_checkpoint_equals_two_stack_computation(x64):
    """A 4-stack face-alignment FAN's first two stacks give the same heatmaps and features."""
    torch.manual_seed(2)
    full = FAN(4)
    _randomise_bn(full, seed=3)
    full.eval()
    model = FrozenFAN(Backbone.FAN4)
    notes = load_state(model, full.state_dict(), "fan4-test")
    model.freeze()
    assert notes["checkpoint_stacks"] == 4 and notes["dropped_keys"] > 0
    with torch.inference_mode():
        outs = full(x64)  # face-alignment's own forward: 4 heatmap tensors
        taps = model.taps(x64)
        ref = reference_forward(full, x64, F.avg_pool2d)  # the 4-stack model's own modules
        feat = model(x64)
    torch.testing.assert_close(taps["heatmaps0"], outs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(taps["heatmaps"], outs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feat, ref["feature"], rtol=1e-5, atol=1e-5)


def test_full_size_input(fan2):
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        f = fan2(x)
    assert f.shape == (1, 768, 64, 64) and f.dtype == torch.float32
    assert torch.isfinite(f).all()


def test_frozen(fan2):
    fan2.train()
    assert not fan2.training and all(not m.training for m in fan2.modules())
    assert all(not p.requires_grad for p in fan2.parameters())
    assert sum(p.numel() for p in fan2.parameters()) == 12_106_504  # paper: ~12.11M


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_state_dict_round_trip(tmp_path, fan2, x64):
    plain = tmp_path / "plain.pth"
    torch.save(fan2.state_dict(), plain)
    model, wid, info = load_backbone(FeaturesConfig(weights=plain))
    assert wid == _sha(plain) and info["source"] == "file" and not info["random_weights"]
    for k, v in fan2.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # an older checkpoint style: {'state_dict': ...} with DataParallel's 'module.' prefix
    wrapped = tmp_path / "wrapped.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in fan2.state_dict().items()},
                "epoch": 3}, wrapped)
    model2, wid2, _ = load_backbone(FeaturesConfig(weights=wrapped))
    assert wid2 == _sha(wrapped) != wid
    with torch.inference_mode():
        torch.testing.assert_close(model2(x64), fan2(x64))


def test_four_stack_checkpoint_file_loads(tmp_path):
    torch.manual_seed(5)
    path = tmp_path / "2DFAN4.pth"
    torch.save(FAN(4).state_dict(), path)  # face-alignment's released format: a plain state dict
    _, wid, info = load_backbone(FeaturesConfig(weights=path, backbone=Backbone.FAN4))
    assert wid == _sha(path)
    assert info["checkpoint_stacks"] == 4 and "dropped" in info["note"]


def test_wrong_keys_and_shapes_are_listed(tmp_path, fan2):
    state = dict(fan2.state_dict())
    del state["conv1.weight"]
    state["extra.layer.weight"] = torch.zeros(3)
    state["l1.weight"] = torch.zeros(10, 256, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as e:
        load_backbone(FeaturesConfig(weights=path))
    msg = str(e.value)
    assert str(path) in msg
    assert "missing keys (1): conv1.weight" in msg
    assert "unexpected keys (1): extra.layer.weight" in msg
    assert "l1.weight (checkpoint (10, 256, 1, 1), model (68, 256, 1, 1))" in msg


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="junk.pth"):
        load_backbone(FeaturesConfig(weights=path))
    with pytest.raises(WeightsError, match="not found: .*missing.pth"):
        load_backbone(FeaturesConfig(weights=tmp_path / "missing.pth"))


def test_random_weights_need_opt_in():
    with pytest.raises(WeightsError, match="features.weights") as e:
        load_backbone(FeaturesConfig())
    assert "allow_random_weights" in str(e.value)


def test_download_only_for_fan4():
    with pytest.raises(WeightsError, match="2DFAN4"):
        load_backbone(FeaturesConfig(allow_download=True, backbone=Backbone.FAN2))


def test_random_weights_seeded():
    with pytest.warns(UserWarning, match="untrained"):
        a, wid, info = load_backbone(FeaturesConfig(allow_random_weights=True, seed=3))
        b, _, _ = load_backbone(FeaturesConfig(allow_random_weights=True, seed=3))
        c, _, _ = load_backbone(FeaturesConfig(allow_random_weights=True, seed=4))
    assert wid == "random-seed3" and info["random_weights"]
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
