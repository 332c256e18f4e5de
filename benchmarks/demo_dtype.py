"""The demo trained and evaluated on a float16 and on a uint8 feature cache (issue 19).

    .venv/bin/python benchmarks/demo_dtype.py [--config configs/demo.yaml] [--out /tmp/demo-dtype]
        [--set KEY=VALUE ...]

Runs manifest .. evaluate of the demo once per `features.dtype` (float16, uint8) into one store
under --out (the demo's data generated there too), then prints each head's Avg F1 (mean over
AUs of the per-fold F1, as the report gives it) on each cache, its change, the largest change of
any frame's probability between the caches, and the caches' bytes per frame.
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import FeatureDtype, load_config, parse_override
from stages import runner
from store import tables
from store.catalog import Catalog
from store.identity import eval_id

STAGES = ("manifest", "faces", "features", "prior", "train", "evaluate")
KEYS = ["variant", "fold", "row"]


def run(config: Path, out: Path, dtype: FeatureDtype, sets: list[str]) -> tuple:
    pairs = [f"store={out / 'store'}", f"dataset.root={out / 'data'}",
             f"features.dtype={dtype.value}", *sets]
    cfg = load_config(config, dict(parse_override(p) for p in pairs))
    cat = Catalog(cfg.store)
    seconds = {}
    for stage in STAGES:
        t0 = time.perf_counter()
        s = runner.execute(stage, cfg, cat, progress=False)
        if s.get("failed"):
            raise SystemExit(f"{stage} failed on {dtype.value}: {s['failed']}")
        seconds[stage] = round(time.perf_counter() - t0, 1)
        if stage == "features":
            seconds["bytes_per_frame"] = s["bytes_per_frame"]
    key = eval_id(cfg)
    metrics = tables.latest(cat, "metrics", cfg.dataset.name, key).to_pandas()
    pred = tables.latest(cat, "predictions", cfg.dataset.name, key).to_pandas()
    return metrics, pred, seconds


def avg_f1(metrics: pd.DataFrame) -> pd.Series:
    """Avg F1 per (variant, fold): the mean over AUs of each fold's F1."""
    per_fold = metrics[metrics.fold.str.isdigit()] if metrics.fold.dtype == object else metrics
    return per_fold.groupby(["variant", "fold"]).f1.mean()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    p.add_argument("--out", type=Path, default=Path("/tmp/demo-dtype"))
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    warnings.simplefilter("ignore", UserWarning)
    from benchmarks.bench_scale import fan_rate

    print(f"FAN rate (this machine, 1 thread, 256 px, batch 8): {fan_rate():.2f} frames/s")
    res = {d: run(args.config, args.out, d, args.set)
           for d in (FeatureDtype.FLOAT16, FeatureDtype.UINT8)}
    (m16, p16, s16), (m8, p8, s8) = res[FeatureDtype.FLOAT16], res[FeatureDtype.UINT8]
    f16, f8 = avg_f1(m16), avg_f1(m8)
    probs = [c for c in p16.columns if c.endswith("_prob")]
    both = p16[KEYS + probs].merge(p8[KEYS + probs], on=KEYS, suffixes=("_16", "_8"))
    d = np.stack([np.abs(both[f"{c}_16"] - both[f"{c}_8"]).to_numpy() for c in probs], 1)
    both["dmax"] = np.nanmax(d, 1)
    dmax = both.groupby(["variant", "fold"]).dmax.max()
    print(f"== demo on float16 vs uint8 feature caches ({args.config}, {len(both)} prediction rows "
          "compared)")
    print(f"bytes/frame: float16 {s16['bytes_per_frame'] / 1e6:.4f} MB, uint8 "
          f"{s8['bytes_per_frame'] / 1e6:.4f} MB (ratio {s8['bytes_per_frame'] / s16['bytes_per_frame']:.3f})")
    print(f"stage seconds float16 {s16}\nstage seconds uint8   {s8}")
    print(f"{'head':<16}{'AvgF1 f16':>10}{'AvgF1 u8':>10}{'change':>9}{'max |dp|':>10}")
    for (v, k), a in f16.items():
        b = f8.get((v, k), np.nan)
        # a fold's own rows, or every fold's for the mean over folds
        dp = dmax.get((v, int(k)), np.nan) if str(k).isdigit() else \
            (dmax[v].max() if v in dmax.index.get_level_values(0) else np.nan)
        print(f"{v + ' fold ' + str(k):<16}{a:10.4f}{b:10.4f}{b - a:+9.4f}{dp:10.4f}")
    print(f"largest probability change over every head and frame: {np.nanmax(both.dmax):.4f}")


if __name__ == "__main__":
    main()
