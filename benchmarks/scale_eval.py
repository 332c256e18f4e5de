"""Evaluate + report at BP4D's size: synthetic probabilities through the real evaluate code.

    .venv/bin/python -m benchmarks.scale_eval OUT [N]     (run by benchmarks/bench_scale.py)

The full BP4D manifest (the real label table, built by bench_scale's BP4D tree in OUT unless
there) gives N frames with their real labels and folds; two variants (au_fan, aunet) x three
folds of unit prediction files are written with label-correlated random probabilities, then
`stages.evaluate.finish` scores them (metrics, significance with its bootstrap, co-occurrence)
and appends the run, and the report stage renders it. Prints seconds of each part and the
process's peak RSS.
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

VARIANTS = ("au_fan", "aunet")
BOOTSTRAP = 200  # the demo's (and a real run's order of) bootstrap draws
SIGNAL = 0.35  # probability = U(0, 1 - SIGNAL) + SIGNAL * label: a detector better than chance


def main() -> float:
    """Runs the benchmark; returns the seconds of evaluate + report."""
    warnings.simplefilter("ignore")
    out = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 146_847
    from benchmarks.bench_scale import bp4d_tree
    from pipeline.config import load_config
    from pipeline.manifest import au_set_of, label_matrix
    from stages import evaluate, runner
    from stages.contract import Plan
    from store import manifests, tables
    from store.catalog import Catalog
    from store.provenance import record, write_provenance, write_table

    config = out / "bp4d" / "bp4d.yaml"
    if not config.exists():
        bp4d_tree(out / "bp4d")
    cfg = load_config(config, {"eval.bootstrap": BOOTSTRAP, "features.allow_random_weights": True})
    cat = Catalog(cfg.store)
    t0 = time.perf_counter()
    runner.execute("manifest", cfg, cat, progress=False)
    t_manifest = time.perf_counter() - t0
    table = manifests.load(cat, cfg.dataset.name)
    df = table.select(["row", "subject", "video_id", "frame", "fold"]).to_pandas().iloc[:n]
    aus = au_set_of(table).columns
    y = label_matrix(table, au_set_of(table))[:n]  # (n, 12), NaN unknown
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    units = []
    for v in VARIANTS:
        for fold in sorted(df.fold.unique()):
            test = np.flatnonzero(df.fold.to_numpy() == fold)
            part = df.iloc[test][evaluate.KEY_COLUMNS].reset_index(drop=True)
            part.insert(0, "eval_dataset", cfg.dataset.name)
            part.insert(1, "variant", v)
            part.insert(2, "fold", int(fold))
            part.insert(3, "head_name", f"{v}-fold{fold}")
            part["face_found"] = True
            lab = np.nan_to_num(y[test])
            for j, au in enumerate(aus):
                p = (rng.uniform(0, 1 - SIGNAL, len(test)) + SIGNAL * lab[:, j]).astype(np.float32)
                part[f"{au}_prob"] = p
                part[f"{au}_pred"] = pd.array((p >= cfg.eval.threshold).astype(np.int8), dtype="Int8")
                part[f"{au}_label"] = pd.array(y[test, j], dtype="Float64").astype("Int8")
            path = cat.root / "bench-units" / f"{v}-fold{fold}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_table(path, tables.conform("predictions", cfg.dataset.name, "unit",
                                             pa.Table.from_pandas(part, preserve_index=False)))
            rec = record(stage="evaluate", name=cat.rel(path), identity={}, inputs={}, code="bench")
            rec["key"] = f"bench-{v}-{fold}"
            write_provenance(path, rec)
            units.append(evaluate.EvalUnit(cfg.dataset.name, cfg.dataset.name, v, int(fold), "",
                                           "", str(path), rec["key"]))
    t_units = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = evaluate.finish(cfg, cat, Plan(units, [], {"units": units}), [])
    t_eval = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = runner.execute("report", cfg, cat, progress=False)
    t_report = time.perf_counter() - t0
    rss = next(int(line.split()[1]) / 1024 for line in open('/proc/self/status')
               if line.startswith('VmHWM:'))  # this process image's peak RSS (MB)
    print(f"frames {len(df)} x {len(VARIANTS)} variants ({len(df) * len(VARIANTS)} prediction rows)"
          f", {len(aus)} AUs, {cfg.eval.bootstrap} bootstrap draws")
    print(f"manifest {t_manifest:.1f} s; unit files written {t_units:.1f} s; evaluate.finish "
          f"{t_eval:.1f} s; report {t_report:.1f} s; evaluate + report {t_eval + t_report:.1f} s "
          f"(target < 120 s); peak RSS {rss:.0f} MB (target < 2048)")
    print(f"Avg F1 {s.get('avg_f1')}; report failed units: {r.get('failed')}")
    return t_eval + t_report


if __name__ == "__main__":
    main()
