"""Stage 5: cross-fold evaluation of the trained heads, written as one new report run.

Unit = (eval dataset, variant, fold): the fold's final head predicts every test-fold frame of
the eval dataset (this dataset, and each of `eval.cross_datasets` on the AUs it shares). A
unit's predictions are cached beside its head (`head_dir/eval-{eval_dataset}.parquet`, with
provenance) so an unchanged unit is skipped. `finish` scores all units and appends the
predictions, metrics, significance, co-occurrence, complexity and prior_metrics tables under a
new run id, then the `runs` row last (the run counts as complete only once it exists).
"""
from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.config import RunConfig, Variant
from pipeline.manifest import au_set_of, label_matrix
from pipeline.temporal import triplet_rows
from stages import scoring
from stages.manifest import au_set as manifest_au_set, load as load_manifest
from stages.manifest import manifest_key
from store import tables
from store.catalog import Catalog, new_run_id
from store.features import FeatureStore
from store.provenance import (code_version, file_sha256, fingerprint, is_current, read_provenance,
                              write_provenance, write_table)

STAGE = "evaluate"
CODE_MODULES = ("stages.evaluate", "stages.scoring", "stages.heads_io", "pipeline.metrics",
                "pipeline.stats", "pipeline.temporal", "store.tables")
KEY_COLUMNS = ["row", "subject", "video_id", "frame"]


@dataclass(frozen=True)
class EvalUnit:
    dataset: str  # the models' (training) dataset
    eval_dataset: str  # whose test frames are scored
    variant: str
    fold: int
    head_name: str
    checkpoint: str
    features: str  # the eval dataset's feature store
    out: str  # cached predictions of this unit

    def __str__(self) -> str:  # task names in Prefect
        return f"{self.eval_dataset}-{self.variant}-fold{self.fold}"


def _code() -> str:
    return code_version(*CODE_MODULES)


def find_heads(cfg: RunConfig, catalog: Catalog) -> list[tuple[str, int, str, Path]]:
    """(variant, fold, head_name, final.pt) per trained (variant, fold): the head of the current
    train config where it exists, else the newest final.pt of that fold."""
    from stages.train import head_name

    base = catalog.dataset_dir(cfg.dataset.name) / "models"
    out = []
    for v in Variant:
        folds: dict[int, list[Path]] = {}
        for p in (base / v.value).glob("fold*/*/final.pt"):
            folds.setdefault(int(p.parent.parent.name[4:]), []).append(p)
        for fold, paths in sorted(folds.items()):
            mine = [p for p in paths if p.parent.name == head_name(cfg, v)]
            pick = mine[0] if mine else max(paths, key=lambda p: p.stat().st_mtime)
            out.append((v.value, fold, pick.parent.name, pick))
    return out


def feature_store_for(cfg: RunConfig, catalog: Catalog, dataset: str) -> Path:
    """The eval dataset's features.zarr for the configured backbone (the newest if several)."""
    return catalog.latest_features(dataset, cfg.features.backbone.value)


def flipped_store(cfg: RunConfig, catalog: Catalog, dataset: str) -> FeatureStore | None:
    """Hook for test-time flip averaging: features of horizontally flipped crops.

    No stage caches flipped features yet, so this returns None and predictions come from the
    unflipped features only. Where such a store exists, `_predict` averages the two passes.
    """
    return None


def _unit_inputs(catalog: Catalog, unit: EvalUnit) -> dict[str, str]:
    head = read_provenance(Path(unit.checkpoint))
    prov = FeatureStore(unit.features).provenance
    return {"head": head["key"] if head else file_sha256(Path(unit.checkpoint)),
            "features": str(prov.get("key") or fingerprint(prov)),
            "manifest": manifest_key(catalog, unit.eval_dataset)}


def _unit_config(cfg: RunConfig) -> dict:
    return {"threshold": cfg.eval.threshold, "batch_size": cfg.train.batch_size}


def all_units(cfg: RunConfig, catalog: Catalog) -> list[EvalUnit]:
    name = cfg.dataset.name
    evals = [name, *[d for d in cfg.eval.cross_datasets if d != name]]
    stores = {d: str(feature_store_for(cfg, catalog, d)) for d in evals}
    return [EvalUnit(name, d, v, k, h, str(p), stores[d], str(p.parent / f"eval-{d}.parquet"))
            for d in evals for v, k, h, p in find_heads(cfg, catalog)]


def plan(cfg: RunConfig, catalog: Catalog, *, force: bool = False) -> list[EvalUnit]:
    units = all_units(cfg, catalog)
    if not units:
        raise FileNotFoundError(f"no trained heads (final.pt) under "
                                f"{catalog.dataset_dir(cfg.dataset.name) / 'models'}; run `aunet train` first")
    return [u for u in units if force or not is_current(
        Path(u.out), config=_unit_config(cfg), code=_code(), inputs=_unit_inputs(catalog, u))]


def _predict(model, store, flipped, rows, triplets, batch_size) -> np.ndarray:
    from stages.heads_io import predict

    p = predict(model, store, rows, triplets, batch_size)  # (n, n_AU)
    if flipped is not None:  # test-time flip averaging (no flipped cache exists yet)
        p = (p + predict(model, flipped, rows, triplets, batch_size)) / 2
    return p


def run_unit(cfg: RunConfig, catalog: Catalog, unit: EvalUnit) -> dict:
    from stages.heads_io import load_head

    t0 = time.perf_counter()
    table = load_manifest(catalog, unit.eval_dataset)
    df = table.select(["row", "subject", "video_id", "frame", "fold"]).to_pandas()
    model, meta = load_head(unit.checkpoint)
    store = FeatureStore(unit.features)
    if store.n_frames != len(df):
        raise ValueError(f"feature store {store.path} has {store.n_frames} frames but the manifest "
                         f"of '{unit.eval_dataset}' has {len(df)} rows; rerun `aunet features`")
    test = np.flatnonzero(df["fold"].to_numpy() == unit.fold)  # (n,)
    face = store.valid[test]
    rows = test[face]
    triplets = None
    if Variant(meta["variant"]).temporal:
        T = int((meta.get("train_config") or {}).get("temporal_offset", cfg.train.temporal_offset))
        triplets = triplet_rows(df, store.valid, T)[0][rows]  # (n_face, 3)
    aus = list(meta["au_columns"])
    probs = np.full((len(test), len(aus)), np.nan, dtype=np.float32)  # (n, n_AU); NaN: no face
    probs[face] = _predict(model, store, flipped_store(cfg, catalog, unit.eval_dataset), rows,
                           triplets, cfg.train.batch_size)
    eval_set = au_set_of(table)
    y = label_matrix(table, eval_set)[test]  # (n, n_eval_AU)
    out = df.iloc[test][KEY_COLUMNS].reset_index(drop=True)
    out.insert(0, "eval_dataset", unit.eval_dataset)
    out.insert(1, "variant", unit.variant)
    out.insert(2, "fold", unit.fold)
    out.insert(3, "head_name", unit.head_name)
    out["face_found"] = face
    for j, au in enumerate(aus):
        out[f"{au}_prob"] = probs[:, j]
        pred = np.where(face, (probs[:, j] >= cfg.eval.threshold).astype(np.float64), np.nan)
        out[f"{au}_pred"] = pd.array(pred, dtype="Float64").astype("Int8")  # null: no face
        label = y[:, eval_set.columns.index(au)] if au in eval_set.columns else np.full(len(test), np.nan)
        out[f"{au}_label"] = pd.array(label, dtype="Float64").astype("Int8")
    arrow = tables.conform("predictions", unit.dataset, "unit", pa.Table.from_pandas(out, preserve_index=False))
    write_table(Path(unit.out), arrow)
    write_provenance(Path(unit.out), stage=STAGE, config=_unit_config(cfg), code=_code(),
                     inputs=_unit_inputs(catalog, unit), extra={"random_weights": store.random_weights})
    return {"unit": str(unit), "path": unit.out, "frames": int(len(test)),
            "no_face": int((~face).sum()), "seconds": round(time.perf_counter() - t0, 3),
            "random_weights": bool(store.random_weights)}


def _prior_rows(cfg: RunConfig, catalog: Catalog) -> pd.DataFrame:
    from stages.prior import prior_path, test_folds

    rows = []
    for fold in test_folds(catalog, cfg.dataset.name):
        metrics = (read_provenance(prior_path(cfg, catalog, fold)) or {}).get("metrics") or {}
        rows += [{"fold": fold, "metric": k, "value": float(v)} for k, v in sorted(metrics.items())
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "fold"]
    return pd.DataFrame(rows, columns=["fold", "metric", "value"])


def _scored(pred: pd.DataFrame, catalog: Catalog) -> dict[str, list[str]]:
    """AU columns scored per eval dataset: the models' AUs that the eval dataset labels."""
    model_aus = [c[:-5] for c in pred.columns if c.endswith("_prob")]
    out = {}
    for ev in pred["eval_dataset"].unique():
        labelled = set(manifest_au_set(catalog, ev).columns)
        out[ev] = [a for a in model_aus if a in labelled]
        if not out[ev]:
            raise ValueError(f"dataset '{ev}' labels none of the models' AUs {model_aus}")
    return out


def finish(cfg: RunConfig, catalog: Catalog, results: list[dict]) -> dict:
    t0, name = time.perf_counter(), cfg.dataset.name
    units = all_units(cfg, catalog)
    missing = [u.out for u in units if not Path(u.out).exists()]
    if missing:
        raise FileNotFoundError(f"unit predictions missing (run the units first): {missing}")
    unit_keys = {str(u): (read_provenance(Path(u.out)) or {}).get("key", "missing") for u in units}
    inputs_key = fingerprint({"units": unit_keys, "eval": cfg.section("eval"), "code": _code()})
    last = tables.latest(catalog, "runs", name).to_pylist()
    summary = {"dataset": name, "units": [str(u) for u in units],
               "evaluated": [r["unit"] for r in results], "reports": str(catalog.reports)}
    if not results and last and last[0]["inputs_key"] == inputs_key:
        return summary | {"skipped": True, "run": last[0]["run"],
                          "random_weights": bool(last[0]["random_weights"])}
    pred = pd.concat([pq.read_table(u.out).to_pandas() for u in units], ignore_index=True)
    scored = _scored(pred, catalog)
    variants = [v.value for v in Variant if v.value in set(pred["variant"])]
    n_aus = sum(c.endswith("_prob") for c in pred.columns)
    frames = {
        "predictions": pred,
        "metrics": scoring.metric_rows(pred, scored, cfg.eval.threshold),
        "significance": scoring.significance_rows(pred, scored, cfg.eval),
        "cooccurrence": scoring.cooccurrence_rows(pred, scored),
        "complexity": scoring.complexity_rows(variants, n_aus),
        "prior_metrics": _prior_rows(cfg, catalog),
    }
    random_weights = any(FeatureStore(s).random_weights for s in {u.features for u in units})
    run_id = new_run_id()
    config = cfg.section("eval")
    written = {}
    for table, df in frames.items():
        if len(df):
            arrow = pa.Table.from_pandas(df, preserve_index=False)
            written[table] = str(tables.append(catalog, table, name, run_id, arrow,
                                               stage=STAGE, config=config, inputs=unit_keys))
    timings = {r["unit"]: r["seconds"] for r in results} | {"finish": round(time.perf_counter() - t0, 3)}
    runs = pa.Table.from_pylist([{
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "config_json": json.dumps(json.loads(cfg.model_dump_json()), sort_keys=True),
        "code_version": _code(), "inputs_json": json.dumps(unit_keys, sort_keys=True),
        "inputs_key": inputs_key, "timings_json": json.dumps(timings, sort_keys=True),
        "random_weights": random_weights, "variants": variants,
        "eval_datasets": sorted(scored), "n_units": len(units)}])
    written["runs"] = str(tables.append(catalog, "runs", name, run_id, runs, stage=STAGE,
                                        config=config, inputs=unit_keys))  # last: run complete
    avg = frames["metrics"]
    avg = avg[(avg.au == "Avg") & (avg.fold == scoring.MEAN)]
    return summary | {"skipped": False, "run": run_id, "random_weights": random_weights,
                      "written": written, "frames": int(len(pred)) // max(len(variants), 1),
                      "no_face": int((~pred["face_found"]).sum()),
                      "avg_f1": {f"{r.eval_dataset}/{r.variant}": round(float(r.f1), 4)
                                 for r in avg.itertuples()},
                      "significance": frames["significance"].to_dict("records")}


def format_summary(summary: dict) -> str:
    from store.provenance import RANDOM_WEIGHTS_BANNER

    lines = [RANDOM_WEIGHTS_BANNER] if summary.get("random_weights") else []
    state = "up to date (same heads, features and config): no new run" if summary["skipped"] else "new run"
    lines.append(f"evaluate, dataset {summary['dataset']}: {state} {summary['run']}")
    lines.append(f"  units: {len(summary['units'])}, evaluated now: {len(summary['evaluated'])}")
    for key, f1 in (summary.get("avg_f1") or {}).items():
        lines.append(f"  Avg F1 (mean of per-fold F1) {key}: {100 * f1:.1f}")
    for s in summary.get("significance") or []:
        if s["test"] == "paired_t":
            lines.append(f"  {s['eval_dataset']} {s['baseline']} vs {s['variant']} [{s['unit']}, n={s['n']}]: "
                         f"t={s['t']:.3f} p={s['p']:.3g}")
        else:
            lines.append(f"  {s['eval_dataset']} {s['variant']} - {s['baseline']} Avg F1 {s['diff']:+.4f}, "
                         f"{100 * s['level']:.0f}% CI over {s['n']} subjects [{s['ci_lo']:+.4f}, {s['ci_hi']:+.4f}]")
    for table, path in (summary.get("written") or {}).items():
        lines.append(f"  wrote {table}: {path}")
    lines.append(f"  query: aunet query --store {Path(summary['reports']).parent} "
                 f"\"SELECT variant, au, f1 FROM metrics WHERE fold = 'mean' ORDER BY variant, au\"")
    return "\n".join(lines)


def run(cfg: RunConfig, catalog: Catalog, *, force: bool = False, progress: bool = True,
        client=None) -> dict:
    with catalog.lock(cfg.dataset.name, STAGE):
        units = plan(cfg, catalog, force=force)
        if client is not None:
            results = client.gather(client.map(lambda u: run_unit(cfg, catalog, u), units))
        else:
            results = [run_unit(cfg, catalog, u)
                       for u in tqdm(units, desc="evaluate", unit="head", disable=not progress)]
        summary = finish(cfg, catalog, results)
        summary["forced"] = force
        return summary
