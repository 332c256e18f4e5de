"""PNG figures of a report run (matplotlib, Agg backend: no display needed).

- `f1_bars`: per-AU F1 by variant (mean of per-fold F1), like the paper's Tables VII-IX as bars;
- `correlation_heatmaps`: AU correlation matrices of the labels and of each variant's
  predictions, pooled over folds (paper's Fig. 8);
- `timeline`: one video's per-frame probabilities of each variant against the labels (Fig. 10).
- `reliability`: reliability diagram per variant from the calibration table (pooled folds, all AUs).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from store.provenance import atomic_path  # noqa: E402
from pipeline.aus import DECISION_THRESHOLD  # noqa: E402
from pipeline.errors import ConfigError  # noqa: E402

DPI = 110
LABEL_COLOUR = "#d62728"  # labels in red, as the paper's Fig. 10
VARIANT_COLOURS = {"au_fan": "#2ca02c", "au_vae": "#9467bd", "au_tdn": "#1f77b4", "aunet": "#ff7f0e"}
BASELINE, BASELINE_COLOUR = "all_positive", "#b0b0b0"  # the all-present baseline: grey, hatched
BANNER_COLOUR = "#b00000"


def save_figure(fig, path: Path, banner: str | None) -> Path:
    """Write fig atomically as a PNG, the random-weights banner across its top where given."""
    if banner:  # random-weights runs: the warning is part of every figure
        fig.text(0.5, 0.995, banner, ha="center", va="top", fontsize=7, color="white",
                 wrap=True, bbox={"facecolor": BANNER_COLOUR, "edgecolor": "none", "pad": 3})
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return path


def f1_bars(metrics: pd.DataFrame, eval_dataset: str, path: Path, banner: str | None = None) -> Path:
    """Grouped bars: F1 (%) per AU and the Avg, one bar per variant. `metrics`: fold == 'mean'."""
    m = metrics[(metrics.eval_dataset == eval_dataset)]
    variants = [v for v in VARIANT_COLOURS if v in set(m.variant)] + \
        sorted(set(m.variant) - set(VARIANT_COLOURS) - {BASELINE}) + \
        ([BASELINE] if BASELINE in set(m.variant) else [])
    aus = list(dict.fromkeys(m.au))
    width = 0.8 / max(len(variants), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(aus) + 2), 4.2))
    x = np.arange(len(aus))
    for i, v in enumerate(variants):
        f1 = m[m.variant == v].set_index("au").reindex(aus)["f1"].to_numpy() * 100
        base = v == BASELINE
        ax.bar(x + (i - (len(variants) - 1) / 2) * width, f1, width,
               label="all present (baseline)" if base else v,
               color=BASELINE_COLOUR if base else VARIANT_COLOURS.get(v),
               hatch="//" if base else None, edgecolor="white" if base else None)
    ax.set_xticks(x, aus, rotation=45)
    ax.set_ylabel("F1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Per-AU F1 on {eval_dataset} (mean of per-fold F1)")
    ax.legend(ncol=min(len(variants), 3), fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.93 if banner else 1))
    return save_figure(fig, path, banner)


def correlation_heatmaps(cooc: pd.DataFrame, eval_dataset: str, path: Path,
                         banner: str | None = None) -> Path:
    """Labels' correlation matrix beside each variant's (pooled rows of the cooccurrence table)."""
    rows = cooc[(cooc.eval_dataset == eval_dataset) & (cooc.fold == "pooled")]
    rows = rows.sort_values("variant", key=lambda s: s.map(list(VARIANT_COLOURS).index))
    if rows.empty:
        raise ValueError(f"no pooled co-occurrence rows for {eval_dataset}")
    aus = list(rows.iloc[0].au_columns)
    n = len(aus)
    panels = [("labels", np.asarray(rows.iloc[0].r_label).reshape(n, n))]
    panels += [(f"{r.variant}\nL2={r.l2:.2f} dep.F1={r.dependency_f1:.2f}",
                np.asarray(r.r_pred).reshape(n, n)) for r in rows.itertuples()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels) + 0.8, 4.4 if banner else 3.9),
                             squeeze=False)
    for ax, (title, r) in zip(axes[0], panels):
        im = ax.imshow(r, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(n), [a[2:] for a in aus], fontsize=6, rotation=90)
        ax.set_yticks(range(n), [a[2:] for a in aus], fontsize=6)
        ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="Pearson r")
    fig.suptitle(f"AU correlation, labels vs predictions, {eval_dataset} (pooled folds)",
                 fontsize=9, y=0.86 if banner else 0.99)  # below a banner that may wrap
    return save_figure(fig, path, banner)


def timeline(pred: pd.DataFrame, aus: list[str], video: str, path: Path,
             threshold: float = DECISION_THRESHOLD, banner: str | None = None) -> Path:
    """One video: per AU, the label (red band) and each variant's probability against frames."""
    v = pred[pred.video_id == video].sort_values("frame")
    if v.empty:
        raise ConfigError(f"eval.timeline_video: video {video!r} has no predictions in this run "
                          "(give a video_id of a test-fold video)")
    variants = [x for x in VARIANT_COLOURS if x in set(v.variant)]
    fig, axes = plt.subplots(len(aus), 1, figsize=(9, 0.75 * len(aus) + 1.2), sharex=True,
                             squeeze=False)
    first = v[v.variant == variants[0]]
    for ax, au in zip(axes[:, 0], aus):
        lab = first[f"{au}_label"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
        ax.fill_between(first.frame, 0, np.nan_to_num(lab), step="mid", color=LABEL_COLOUR,
                        alpha=0.3, linewidth=0, label="label")
        for var in variants:
            g = v[v.variant == var]
            ax.plot(g.frame, g[f"{au}_prob"].astype(float), color=VARIANT_COLOURS[var], lw=1, label=var)
        ax.axhline(threshold, color="grey", lw=0.5, ls=":")
        ax.set_ylim(-0.05, 1.05)
        ax.set_yticks([])
        ax.set_ylabel(au, rotation=0, ha="right", va="center", fontsize=8)
    axes[0, 0].legend(ncol=len(variants) + 1, fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.02))
    axes[-1, 0].set_xlabel("frame")
    fig.suptitle(f"Video {video}: probabilities against labels", fontsize=9,
                 y=0.96 if banner else 0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.94 if banner else 0.98))
    return save_figure(fig, path, banner)


def reliability(calib: pd.DataFrame, eval_dataset: str, path: Path,
                banner: str | None = None) -> Path:
    """Reliability diagram per variant: fraction of positive labels against mean probability
    per bin, pooled over folds and AUs (`au = 'all'` rows of the calibration table); the
    diagonal is perfect calibration, marker area the bin's share of frame-AU pairs."""
    rows = calib[(calib.eval_dataset == eval_dataset) & (calib.fold == "pooled") & (calib.au == "all")]
    if rows.empty:
        raise ValueError(f"no pooled calibration rows for {eval_dataset}")
    fig, ax = plt.subplots(figsize=(4.8, 4.8 if banner else 4.4))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfectly calibrated")
    for r in rows.itertuples():
        count = np.asarray(r.bin_count, np.float64)
        x, y = np.asarray(r.bin_mean_prob, np.float64), np.asarray(r.bin_frac_pos, np.float64)
        keep = count > 0
        colour = VARIANT_COLOURS.get(r.variant)
        ax.plot(x[keep], y[keep], color=colour, lw=1.2, marker=None,
                label=f"{r.variant}: ECE {r.ece:.3f}, Brier {r.brier:.3f}")
        ax.scatter(x[keep], y[keep], s=400 * count[keep] / count.sum() + 8, color=colour, alpha=0.6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("fraction of frames with the AU labelled present")
    ax.set_title(f"Reliability on {eval_dataset}, all AUs, pooled folds", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.93 if banner else 1))
    return save_figure(fig, path, banner)
