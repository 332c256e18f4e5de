"""`aunet evaluate --fold-draws K`: how much Avg F1 moves with the draw of the folds alone.

For a user's own dataset with `dataset.folds: kfold` (the standard BP4D / DISFA folds and a
given `fold` column stay fixed), draw d = 0..K-1 re-draws the subject-exclusive folds with
`dataset.fold_seed + d` and runs manifest, faces, features, prior, train and evaluate on them:
every head is retrained on its draw's folds. Draw 0 is the config itself; draw d > 0 is the
same data under the dataset name `{name}-draw{d}` (its own manifest, stores and report runs,
so the config's own artifacts are never touched; its crops and features are computed again).
The spread (mean, standard deviation, min, max over draws) of each variant's Avg F1 is written
to `{store}/reports/rendered/{name}/fold_draws.json`.
"""
from __future__ import annotations

import numpy as np

from pipeline.config import FoldScheme, RunConfig
from pipeline.errors import ConfigError
from store.catalog import Catalog
from store.provenance import write_json

STAGES = ("manifest", "faces", "features", "prior", "train", "evaluate")
DRAW_NAME = "{name}-draw{d}"


def draw_configs(cfg: RunConfig, k: int) -> list[RunConfig]:
    """The K configs of the draws (the first is `cfg`); ConfigError unless folds are kfold."""
    if cfg.dataset.folds is not FoldScheme.KFOLD:
        raise ConfigError(f"--fold-draws re-draws k-fold folds; dataset '{cfg.dataset.name}' has "
                          f"folds: {cfg.dataset.folds.value}, which stay fixed (set folds: kfold "
                          "for your own data)")
    if k < 2:
        raise ConfigError("--fold-draws needs K >= 2 draws to show a spread")
    out = [cfg]
    for d in range(1, k):
        ds = cfg.dataset.model_copy(update={"name": DRAW_NAME.format(name=cfg.dataset.name, d=d),
                                            "fold_seed": cfg.dataset.fold_seed + d})
        out.append(cfg.model_copy(update={"dataset": ds}))
    return out


def spread(avg_f1: list[dict[str, float]]) -> dict[str, dict]:
    """Per 'eval_dataset/variant' key of the own dataset: Avg F1 per draw and its spread."""
    out = {}
    for key in avg_f1[0]:
        v = np.array([d[key] for d in avg_f1 if key in d])
        out[key] = {"per_draw": v.tolist(), "mean": float(v.mean()),
                    "sd": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
                    "min": float(v.min()), "max": float(v.max())}
    return out


def run(cfg: RunConfig, k: int, *, force: bool = False, progress: bool = False) -> dict:
    """Run every draw through the one runner; the summary with the spread per variant."""
    from stages import runner

    catalog = Catalog(cfg.store)
    draws, failed = [], []
    for d, c in enumerate(draw_configs(cfg, k)):
        summary = {}
        for stage in STAGES:
            summary = runner.execute(stage, c, catalog, force=force, progress=progress)
            if summary.get("failed"):
                failed.append(f"draw {d} ({c.dataset.name}) {stage}: {summary['failed']}")
                break
        else:  # the draw's own dataset name is replaced by the config's, to line the draws up
            own = {key.replace(f"{c.dataset.name}/", f"{cfg.dataset.name}/", 1): f1
                   for key, f1 in (summary.get("avg_f1") or {}).items()
                   if key.startswith(f"{c.dataset.name}/")}
            draws.append({"draw": d, "dataset": c.dataset.name, "fold_seed": c.dataset.fold_seed,
                          "run": summary.get("run"), "avg_f1": own})
    result = {"dataset": cfg.dataset.name, "k": k, "draws": draws, "failed": failed,
              "spread": spread([d["avg_f1"] for d in draws]) if draws else {}}
    path = catalog.rendered(cfg.dataset.name) / "fold_draws.json"
    write_json(path, result)
    return result | {"path": str(path)}


def format_summary(summary: dict) -> str:
    lines = [f"fold draws, dataset {summary['dataset']}: {len(summary['draws'])} of {summary['k']} "
             "draws evaluated (every head retrained on each draw's folds)"]
    for key, s in summary["spread"].items():
        per = ", ".join(f"{100 * x:.1f}" for x in s["per_draw"])
        lines.append(f"  Avg F1 {key}: mean {100 * s['mean']:.1f}, sd {100 * s['sd']:.1f}, range "
                     f"{100 * s['min']:.1f}-{100 * s['max']:.1f} (draws: {per})")
    lines += [f"  FAILED: {f}" for f in summary["failed"]]
    lines.append(f"  wrote {summary['path']}")
    return "\n".join(lines)
