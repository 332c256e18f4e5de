"""`--runtime`: resolution, the ONNX exports (cached by key, checked against torch, refused when
they disagree) and the onnx engine's outputs against the torch engine's."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import SHARED
from pipeline.aus import AUSet
from pipeline.config import FacesConfig, Runtime, TemporalMode, Variant
from pipeline.models import heads
from pipeline.predict import runtime as rt
from pipeline.predict import split
from pipeline.predict.bundle import read_spec
from pipeline.predict.engine import Engine
from store import onnx_cache

BLAZE = SHARED / "weights" / "blazeface" / "blazeface.pth"
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not BLAZE.exists(), reason=f"{SHARED} absent: no detector weights")]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from stages.bundles import untrained

    return untrained(tmp_path_factory.mktemp("b") / "aunet", Variant.AUNET, AUSet.BP4D.columns,
                     crop_size=64, temporal_offset=2, detector=FacesConfig(detector_weights=BLAZE))


def _engine(bundle, runtime, exports=onnx_cache.cached_export, tta=False):
    return Engine(bundle, read_spec(bundle), temporal=TemporalMode.CACHED, tta_flip=tta,
                  allow_random_weights=True, runtime=runtime, exports=exports)


def test_resolve_picks_onnx_on_the_cpu_and_says_why_it_cannot(monkeypatch):
    assert rt.resolve(Runtime.AUTO, "cpu") is Runtime.ONNX
    assert rt.resolve(Runtime.AUTO, "cuda") is Runtime.TORCH
    assert rt.resolve(Runtime.TORCH, "cpu") is Runtime.TORCH
    with pytest.raises(rt.RuntimeUnavailable, match="CPU only.*--runtime torch"):
        rt.resolve(Runtime.ONNX, "cuda:0")
    monkeypatch.setattr(rt, "onnxruntime_version", lambda: None)
    assert rt.resolve(Runtime.AUTO, "cpu") is Runtime.TORCH
    with pytest.raises(rt.RuntimeUnavailable, match="not installed"):
        rt.resolve(Runtime.ONNX, "cpu")


def test_check_refuses_outputs_past_tolerance():
    ref = np.linspace(-50, 50, 1000, dtype=np.float32)
    assert rt.check([ref], [ref + 1e-4], "x") <= rt.CHECK_TOLERANCE
    with pytest.raises(rt.RuntimeUnavailable, match="x: the ONNX export's outputs differ"):
        rt.check([ref], [ref + 0.1], "x")
    with pytest.raises(rt.RuntimeUnavailable):
        rt.check([ref], [np.full_like(ref, np.nan)], "x")
    # a float16 output (the FAN's features) is checked beyond its own rounding: up to 50 * 2**-11
    # = 0.024 here, 4.9e-4 of the scale; a wrong one still fails
    assert np.abs(ref.astype(np.float16) - ref).max() / 50 > rt.CHECK_TOLERANCE
    assert rt.check([ref], [ref.astype(np.float16)], "x") <= rt.CHECK_TOLERANCE
    with pytest.raises(rt.RuntimeUnavailable):
        rt.check([ref], [(ref + 0.1).astype(np.float16)], "x")


def test_onnx_engine_matches_torch_and_exports_once_per_key(bundle, monkeypatch, tmp_path):
    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(tmp_path / "cache"))
    written = []

    def exports(name, identity, write):
        return onnx_cache.cached_export(name, identity, lambda p: (written.append(name), write(p)))

    onnx = _engine(bundle, Runtime.ONNX, exports, tta=True)
    nets = ["fan", "stem", "rest"]
    assert onnx.runtime is Runtime.ONNX and written == nets
    assert onnx.check_error["fan"] <= rt.CHECK_TOLERANCE
    assert onnx.check_error["head"] <= rt.CHECK_TOLERANCE
    _engine(bundle, Runtime.ONNX, exports)
    assert written == nets  # the second load reads the cache
    files = sorted(p.name for p in (tmp_path / "cache" / "onnx").iterdir())
    assert len(files) == 3 and not any(p.startswith(".") for p in files)  # no temporary left
    monkeypatch.setattr(rt, "onnxruntime_version", lambda: "0.0.0")  # another runtime version
    _engine(bundle, Runtime.ONNX, exports)
    assert written == nets * 2
    torch_ = _engine(bundle, Runtime.TORCH, tta=True)
    crops = rt.probe_crops(5, 64)
    (fo, po), (ft, pt) = onnx.features(crops), torch_.features(crops)
    assert isinstance(fo, split.Stems) and len(fo) == len(ft) == 10  # 5 crops, then 5 flips
    assert ft.shape == (10, 768, 16, 16) and po.shape == pt.shape == (5, 68, 2)
    assert [p.shape for p in fo.parts] == [(10, 256, 16, 16), (10, 256, 8, 8), (10, 256, 8, 8)]
    np.testing.assert_allclose(po, pt, atol=1.0)  # a quarter cell on an arg-max tie at most
    n = len(crops)
    prev, nxt = list(np.roll(np.arange(10), 1)), list(np.roll(np.arange(10), -1))
    a, b = onnx.probs(fo, fo[prev], fo[nxt]), torch_.probs(ft, ft[prev], ft[nxt])
    assert a.shape == (n, 12) and np.abs(a - b).max() <= 1e-4


def test_an_export_that_disagrees_with_torch_is_refused(bundle, monkeypatch, tmp_path):
    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(tmp_path / "cache"))
    good = _engine(bundle, Runtime.TORCH)
    wrong = copy.deepcopy(good.fan_outputs)
    with torch.no_grad():
        wrong.fan.conv1.weight.mul_(1.01)  # another network under the same key

    def exports(name, identity, write):
        if name == "fan":
            return onnx_cache.cached_export(name, identity, lambda p: rt.export(
                wrong, [torch.rand(1, 3, 64, 64)], ["crops"], ["features", "heatmaps"], p))
        return onnx_cache.cached_export(name, identity, write)

    with pytest.raises(rt.RuntimeUnavailable, match="the FAN: the ONNX export's outputs differ.*--runtime torch"):
        _engine(bundle, Runtime.ONNX, exports)
    # a split head that reads its neighbours the wrong way round (t+T for t-T): the rest's
    # logits are checked against the unsplit head on three distinct probe crops
    swapped = split.rest_args
    monkeypatch.setattr(split, "rest_args", lambda t, prev=None, nxt=None: swapped(t, nxt, prev))
    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(tmp_path / "cache2"))
    with pytest.raises(rt.RuntimeUnavailable, match="the head: the ONNX export's outputs differ"):
        _engine(bundle, Runtime.ONNX)


def test_probs_of_items_equals_probs_of_their_blocks(bundle):
    """probs_of runs the head item by item (a crop with its flip under TTA): the same
    probabilities as the whole blocks, origins first, then flips, in one call."""
    eng = _engine(bundle, Runtime.TORCH, tta=True)
    f, _ = eng.features(rt.probe_crops(6, 64))  # (12, 768, 16, 16): 6 crops, then 6 flips
    n = 6
    items = [f[[i, i + n]] for i in range(n)]  # each (2, ...): a crop and its flip
    cols = [items, items[1:] + items[:1], items[-1:] + items[:-1]]
    blocks = [torch.cat([torch.cat([c[0:1] for c in col]), torch.cat([c[1:2] for c in col])])
              for col in cols]
    np.testing.assert_allclose(eng.probs_of(cols), eng.probs(*blocks), atol=1e-6)
    plain = _engine(bundle, Runtime.TORCH)
    g, _ = plain.features(rt.probe_crops(6, 64))
    one = [[g[i:i + 1] for i in range(n)]] * 3
    np.testing.assert_allclose(plain.probs_of(one), plain.probs(g, g, g), atol=1e-6)


@pytest.mark.parametrize("head_class", [heads.StaticHead, heads.TDNHead])
def test_split_head_equals_the_head(head_class):
    """HeadRest(HeadStem(.)) is the head: the stem per frame, the rest per item from the stems
    of frames t, t-T and t+T; a missing neighbour (the frame itself) leaves the bias alone."""
    torch.manual_seed(0)
    head = head_class(5).eval()
    with torch.no_grad():
        head.classifier.bn.running_var.uniform_(0.5, 2.0)  # not the identity BatchNorm
        f = torch.randn(4, heads.FEATURE_CHANNELS, 16, 16).half()  # (B, 768, h, w) float16
        stem, rest = split.HeadStem(head), split.HeadRest(head)
        s = stem(f)
        assert [list(p.shape) for p in s] == ([[4, 256, 16, 16], [4, 256, 8, 8], [4, 256, 8, 8]]
                                             if head.temporal else [[4, 256, 16, 16]])
        prev, nxt = [3, 0, 1, 2], [1, 2, 3, 0]
        frames = [f, f[prev], f[nxt]] if head.temporal else [f]
        want = head(*[g.float() for g in frames])
        got = rest(*split.rest_args(*[stem(g) for g in frames]))
        assert float((got - want).abs().max()) <= 1e-5 * max(1.0, float(want.abs().max()))
        if head.temporal:  # no neighbour: f_prev = f_next = f_t
            alone = rest(*split.rest_args(s, s, s))
            torch.testing.assert_close(alone, head(f.float(), f.float(), f.float()), atol=1e-5, rtol=0)
            assert (got - alone).abs().max() > 1e-3  # the neighbours count
