"""Heads: exact parameter counts, call contract, and that they learn what they should."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from pipeline.config import TrainConfig, Variant
from pipeline.models.heads import build_head, load_body, n_trainable
from pipeline.learning.inference import predict
from pipeline.learning.training import fit

C, S = 768, 16  # real channels, small maps: the heads are convolutional up to a global pool


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("variant,n_aus,expected", [
    (Variant.AU_FAN, 12, 1_857_164), (Variant.AU_VAE, 12, 1_857_164),
    (Variant.AU_TDN, 12, 2_657_036), (Variant.AUNET, 12, 2_657_036), (Variant.AUNET, 8, 2_656_520),
])
def test_parameter_counts_exact(variant, n_aus, expected):
    assert n_trainable(build_head(variant, n_aus)) == expected


def test_call_contract():
    x = torch.randn(2, C, S, S)
    static, tdn = build_head(Variant.AU_FAN, 12).eval(), build_head(Variant.AU_TDN, 12).eval()
    assert static(x).shape == (2, 12)
    assert torch.equal(static(x), static(x, torch.randn_like(x), torch.randn_like(x)))
    assert tdn(x, x, x).shape == (2, 12)
    with pytest.raises(ValueError, match="f_prev and f_next"):
        tdn(x)


def test_load_body_new_classifier():
    src = build_head(Variant.AUNET, 12)
    dst = build_head(Variant.AUNET, 8)
    fresh = load_body(dst, src.state_dict())
    assert fresh == ["classifier.fc2.bias", "classifier.fc2.weight"]
    assert torch.equal(dst.stage1[0].conv1.weight, src.stage1[0].conv1.weight)
    assert torch.equal(dst.classifier.fc1.weight, src.classifier.fc1.weight)


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, lr=1e-3, batch_size=8, lr_step_epochs=100, feature_shift=0,
                shuffle_buffer=32)
    return TrainConfig(**(base | kw))


def _train_and_score(variant, store, frames, y, eval_frames, y_eval, cfg):
    torch.manual_seed(0)
    model = build_head(variant, y.shape[1])
    w = torch.ones(y.shape[1])
    fit(model, store, frames, y, w, cfg, None, lambda e, s: None, progress=False)
    if eval_frames.shape[1] == 3:  # the stages' prediction path (reader, batches, eval mode)
        prob = predict(model, store, eval_frames[:, 1], eval_frames, batch_size=16)
    else:
        prob = predict(model, store, eval_frames[:, 0], batch_size=16)
    pred = (prob >= 0.5).astype(int)
    known = ~np.isnan(y_eval)
    return np.mean([f1_score(y_eval[known[:, j], j], pred[known[:, j], j], zero_division=0)
                    for j in range(y.shape[1]) if known[:, j].any()])


def test_static_head_learns_features_to_aus(make_feature_store):
    """AU j is on iff channel block j carries a bump in its own spatial patch."""
    rng = np.random.default_rng(0)
    n, n_aus = 96, 4
    y = (rng.random((n, n_aus)) < 0.4).astype(np.float32)
    x = rng.normal(0, 1, (n, C, S, S)).astype(np.float16)
    for j in range(n_aus):  # AU j: +2 on channels 192j.. in quadrant j
        r, c = divmod(j, 2)
        x[y[:, j] == 1, j * 192:(j + 1) * 192, r * 8:r * 8 + 8, c * 8:c * 8 + 8] += 2.0
    store = make_feature_store(x)
    train, test = np.arange(64), np.arange(64, n)
    f1 = _train_and_score(Variant.AU_FAN, store, train[:, None], y[train], test[:, None], y[test], _cfg())
    chance = np.mean([2 * p / (1 + p) for p in y[test].mean(0)])  # F1 of "always on"
    assert f1 > 0.85 and f1 > chance + 0.25, (f1, chance)


def test_tdn_beats_static_when_only_change_carries_the_label(make_feature_store):
    """Video of three frames (t-1, t, t+1): label = level rising; the middle frame is uninformative."""
    rng = np.random.default_rng(1)
    n = 96
    levels = rng.random((n, 3))  # prev, mid, next
    y = (levels[:, 2] > levels[:, 0]).astype(np.float32)[:, None]  # (n, 1)
    base = rng.normal(0, 1, (n, 1, C, S, S)).astype(np.float32)
    pattern = np.zeros((C, S, S), np.float32)
    pattern[:64] = 2.0
    x = (base + levels[:, :, None, None, None] * pattern).astype(np.float16)  # (n, 3, C, S, S)
    store = make_feature_store(x.reshape(n * 3, C, S, S))
    trip = np.arange(n * 3).reshape(n, 3)
    train, test = np.arange(64), np.arange(64, n)
    cfg = _cfg(epochs=4)
    f1_tdn = _train_and_score(Variant.AU_TDN, store, trip[train], y[train], trip[test], y[test], cfg)
    f1_fan = _train_and_score(Variant.AU_FAN, store, trip[train][:, 1:2], y[train],
                              trip[test][:, 1:2], y[test], cfg)
    assert f1_tdn > 0.8 and f1_tdn > f1_fan + 0.15, (f1_tdn, f1_fan)
