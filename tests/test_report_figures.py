"""The report's figures hold what they claim (stages/report_figures.py): the bars, cells and
curves are read back from the figure objects, and the PNGs from disk."""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

from stages import report_figures as figs

AUS = ["AU01", "AU02", "AU04"]
F1 = {"au_fan": [0.40, 0.55, 0.30], "aunet": [0.62, 0.48, 0.35], "all_positive": [0.20, 0.25, 0.10]}


@pytest.fixture()
def captured(monkeypatch):
    """Each figure object as it is saved (then saved as usual)."""
    seen = []
    real = figs.save_figure

    def keep(fig, path, banner):
        seen.append(fig)
        return real(fig, path, banner)

    monkeypatch.setattr(figs, "save_figure", keep)
    return seen


def _png(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)  # (H, W, 3) BGR
    assert img is not None, f"{path} is not a readable PNG"
    return img


def _metrics() -> pd.DataFrame:
    rows = [{"eval_dataset": "d", "variant": v, "fold": "mean", "au": au, "f1": f}
            for v, fs in F1.items() for au, f in zip(AUS + ["Avg"], fs + [float(np.mean(fs))])]
    return pd.DataFrame(rows)


def test_f1_bars_draw_one_bar_per_variant_and_au_at_its_f1(tmp_path, captured):
    path = figs.f1_bars(_metrics(), "d", tmp_path / "bars.png")
    ax = captured[0].axes[0]
    bars = ax.patches  # Rectangles, variant by variant (the order of the legend)
    assert len(bars) == len(F1) * (len(AUS) + 1)
    heights = np.array([b.get_height() for b in bars]).reshape(len(F1), len(AUS) + 1)
    want = [F1[v] + [np.mean(F1[v])] for v in ("au_fan", "aunet", "all_positive")]  # baseline last
    np.testing.assert_allclose(heights, np.array(want) * 100, rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == AUS + ["Avg"]
    img = _png(path)
    w, h = captured[0].get_size_inches() * figs.DPI
    assert img.shape[:2] == (round(h), round(w))
    green = np.all(np.abs(img.astype(int) - [0x2c, 0xa0, 0x2c]) < 8, axis=2)  # au_fan, BGR
    assert green.sum() > 500  # its bars are on the image, not only in the object


def test_banner_is_on_the_image(tmp_path):
    plain = _png(figs.f1_bars(_metrics(), "d", tmp_path / "a.png"))
    marked = _png(figs.f1_bars(_metrics(), "d", tmp_path / "b.png", banner="UNTRAINED BACKBONE"))
    red = lambda img: np.all(np.abs(img.astype(int) - [0, 0, 0xb0]) < 10, axis=2).sum()
    assert red(plain) == 0 and red(marked) > 200


def test_correlation_heatmaps_show_each_matrix(tmp_path, captured):
    n = len(AUS)
    r_label = np.array([[1, .5, -.2], [.5, 1, 0], [-.2, 0, 1]])
    r_fan, r_net = np.eye(n), np.full((n, n), -0.5) + 1.5 * np.eye(n)
    cooc = pd.DataFrame([{"eval_dataset": "d", "variant": v, "fold": "pooled", "au_columns": AUS,
                          "r_label": r_label.ravel(), "r_pred": r.ravel(), "l2": 0.1,
                          "dependency_f1": 0.5} for v, r in (("aunet", r_net), ("au_fan", r_fan))])
    path = figs.correlation_heatmaps(cooc, "d", tmp_path / "corr.png")
    images = [ax.images[0].get_array() for ax in captured[0].axes if ax.images]
    assert len(images) == 3  # labels, au_fan, aunet (the variants' fixed order)
    for got, want in zip(images, (r_label, r_fan, r_net)):
        np.testing.assert_allclose(np.asarray(got), want)
    img = _png(path)
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # not blank


def test_timeline_draws_each_variants_probabilities_and_the_labels(tmp_path, captured):
    frames = np.arange(20)
    rows = []
    for v, shift in (("au_fan", 0.0), ("aunet", 0.3)):
        for f in frames:
            rows.append({"video_id": "S0/T1", "frame": f, "variant": v,
                         **{f"{a}_prob": (f / 20 + shift) % 1 for a in AUS},
                         **{f"{a}_label": int(f >= 10) for a in AUS}})
    pred = pd.DataFrame(rows)
    path = figs.timeline(pred, AUS, "S0/T1", tmp_path / "t.png")
    axes = captured[0].axes
    assert len(axes) == len(AUS)
    for ax, au in zip(axes, AUS):
        curves = [l for l in ax.get_lines() if len(l.get_xdata()) == len(frames)]
        assert len(curves) == 2  # one per variant (the threshold line aside)
        np.testing.assert_allclose(curves[1].get_ydata(), ((frames / 20 + 0.3) % 1))
        band = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert band  # the label band
    assert _png(path).std() > 10
