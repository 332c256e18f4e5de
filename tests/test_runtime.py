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
from pipeline.predict import runtime as rt
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
    assert onnx.runtime is Runtime.ONNX and written == ["fan", "head"]
    assert onnx.check_error["fan"] <= rt.CHECK_TOLERANCE
    _engine(bundle, Runtime.ONNX, exports)
    assert written == ["fan", "head"]  # the second load reads the cache
    files = sorted(p.name for p in (tmp_path / "cache" / "onnx").iterdir())
    assert len(files) == 2 and not any(p.startswith(".") for p in files)  # no temporary left
    monkeypatch.setattr(rt, "onnxruntime_version", lambda: "0.0.0")  # another runtime version
    _engine(bundle, Runtime.ONNX, exports)
    assert written == ["fan", "head"] * 2
    torch_ = _engine(bundle, Runtime.TORCH, tta=True)
    crops = rt.probe_crops(5, 64)
    (fo, po), (ft, pt) = onnx.features(crops), torch_.features(crops)
    assert fo.shape == ft.shape == (10, 768, 16, 16) and po.shape == pt.shape == (5, 68, 2)
    np.testing.assert_allclose(po, pt, atol=1.0)  # a quarter cell on an arg-max tie at most
    n = len(crops)
    a, b = onnx.probs(fo, fo.roll(1, 0), fo.roll(-1, 0)), torch_.probs(ft, ft.roll(1, 0), ft.roll(-1, 0))
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
