"""Stage 5: cross-fold evaluation of the trained heads, written as one new report run.

Unit = (eval dataset, variant, fold): the fold's final head predicts every test-fold frame of
the eval dataset (this dataset, and each of `eval.cross_datasets` on the AUs it shares). A
unit's predictions are cached in the stage's own folder (`catalog.predictions`, with provenance:
the head's key, the eval features' key and the test fold's labels) so an unchanged unit is
skipped. The heads are exactly those the config asks for, each checked current. `finish` scores all units and appends the
predictions, metrics, significance, co-occurrence, complexity, prior_metrics, calibration and
(eval.threshold_choice: validation) thresholds tables under a
new run id, then the `runs` row last (the run counts as complete only once it exists).
"""
from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.config import RunConfig, ThresholdChoice, Variant
from pipeline.folds import ALL_SUBJECTS
from pipeline.errors import ConfigError, StaleArtifact
from pipeline.learning.inference import predict
from pipeline.manifest import au_set_of, label_matrix
from pipeline.learning.temporal import triplet_rows
from stages import calibration, groups, mixed_eval, scoring, thresholds
from stages.contract import Plan, UnitResult
from store import features as feature_store
from store import location, manifests, mix, tables
from store.catalog import Catalog, new_run_id
from store.codekey import code_key
from store.identity import eval_id
from store.models import HeadInputs, checked_head, head_selection, load_head
from store.provenance import (artifact_key, fingerprint, read_provenance, record, trusted,
                              write_provenance, write_table)

STAGE = "evaluate"
KEY_COLUMNS = ["row", "subject", "video_id", "frame"]


@dataclass(frozen=True)
class EvalUnit:
    dataset: str  # the models' (training) dataset
    eval_dataset: str  # whose test frames are scored
    variant: str
    fold: int
    checkpoint: str  # the head's final.pt
    features: str  # the eval dataset's feature store (its path; a mix's: its members')
    out: str  # cached predictions of this unit
    key: str  # the predictions' expected key

    @property
    def name(self) -> str:
        return f"{self.eval_dataset}-{self.variant}-fold{self.fold}"

    size = 0

    def __str__(self) -> str:  # task names in Prefect
        return self.name


def eval_datasets(cfg: RunConfig) -> list[str]:
    return [cfg.dataset.name, *[d for d in cfg.eval.cross_datasets if d != cfg.dataset.name]]


def reads(cfg: RunConfig) -> list[tuple[str, str]]:
    own = [(cfg.dataset.name, s) for s in ("manifest", "features", "prior", "train")]
    if mix.is_mix(cfg):  # the members' stores, and their own evaluations (the comparison)
        own += [(m.dataset.name, s) for m in mix.members(cfg) for s in ("features", "evaluate")]
    return own + [(d, s) for d in eval_datasets(cfg)[1:] for s in ("manifest", "features")]


def _unit_config(cfg: RunConfig) -> dict:
    e = cfg.eval
    if e.threshold_choice is ThresholdChoice.FIXED:
        return {"threshold": e.threshold}
    return {"threshold": e.threshold, "threshold_choice": e.threshold_choice.value,
            "validation_fraction": e.validation_fraction, "validation_seed": e.validation_seed}


def all_units(cfg: RunConfig, catalog: Catalog) -> list[EvalUnit]:
    """One unit per (eval dataset, variant, fold) of the heads this config asks for; each head
    and feature store is checked current (MissingArtifact / StaleArtifact say what to run)."""
    variants, folds = head_selection(cfg, catalog, None)
    heads = HeadInputs(cfg, catalog)
    head_keys = {}
    for v in variants:
        for k in [f for f in folds if f != ALL_SUBJECTS]:  # a model of every subject has no test
            path = checked_head(cfg, catalog, v, k, heads)
            head_keys[(v, k)] = (path, read_provenance(path)["key"])
    units = []
    for d in eval_datasets(cfg):
        store = feature_store.checked(cfg, catalog, d)
        store_key = store.provenance["key"]
        mrec = manifests.checked(cfg, catalog, d)
        for (v, k), (path, hkey) in head_keys.items():
            test = mrec["keys"]["test"].get(str(k))
            inputs = {"head": hkey, "features": store_key, "rows": mrec["keys"]["rows"],
                      "test_labels": test}
            key = artifact_key(_unit_config(cfg), inputs, code_key("stages.evaluate"))
            units.append(EvalUnit(cfg.dataset.name, d, v.value, k, str(path), str(store.path),
                                  str(catalog.predictions(cfg, d, v, k)), key))
    return units


def plan(cfg: RunConfig, catalog: Catalog, *, force: bool = False, select=None) -> Plan:
    units = all_units(cfg, catalog)
    todo = [u for u in units if force or trusted(location.as_path(u.out), u.key) is None]
    return Plan(todo, [u.name for u in units if u not in todo], {"units": units})


def prepare(cfg: RunConfig, catalog: Catalog, plan: Plan) -> None:
    """Nothing to create: each unit writes its own predictions file."""


def run_unit(cfg: RunConfig, catalog: Catalog, unit: EvalUnit, progress=None) -> dict:
    t0 = time.perf_counter()
    table = manifests.load(catalog, unit.eval_dataset)
    df = table.select(["row", "subject", "video_id", "frame", "fold"]).to_pandas()
    model, meta = load_head(unit.checkpoint)
    store = feature_store.checked(cfg, catalog, unit.eval_dataset)
    if store.n_frames != len(df):
        raise StaleArtifact(f"feature store {store.path} has {store.n_frames} frames but the manifest "
                         f"of '{unit.eval_dataset}' has {len(df)} rows; rerun `aunet features`")
    test = np.flatnonzero(df["fold"].to_numpy() == unit.fold)  # (n,)
    face = store.valid[test]
    rows = test[face]
    triplets = None
    if Variant(meta["variant"]).temporal:
        T = int(meta["temporal_offset"])
        triplets = triplet_rows(df, store.valid, T)[0][rows]  # (n_face, 3)
    aus = list(meta["au_columns"])
    probs = np.full((len(test), len(aus)), np.nan, dtype=np.float32)  # (n, n_AU); NaN: no face
    probs[face] = predict(model, store, rows, triplets, cfg.train.batch_size)
    eval_set = au_set_of(table)
    y = label_matrix(table, eval_set)[test]  # (n, n_eval_AU)
    out = df.iloc[test][KEY_COLUMNS].reset_index(drop=True)
    out.insert(0, "eval_dataset", unit.eval_dataset)
    out.insert(1, "variant", unit.variant)
    out.insert(2, "fold", unit.fold)
    out.insert(3, "head_name", location.as_path(unit.checkpoint).parent.name)
    out["face_found"] = face
    for j, au in enumerate(aus):
        out[f"{au}_prob"] = probs[:, j]
        pred = np.where(face, (probs[:, j] >= cfg.eval.threshold).astype(np.float64), np.nan)
        out[f"{au}_pred"] = pd.array(pred, dtype="Float64").astype("Int8")  # null: no face
        label = y[:, eval_set.columns.index(au)] if au in eval_set.columns else np.full(len(test), np.nan)
        out[f"{au}_label"] = pd.array(label, dtype="Float64").astype("Int8")
    arrow = tables.conform("predictions", unit.dataset, "unit", pa.Table.from_pandas(out, preserve_index=False))
    chosen = None  # validation thresholds: from the head's own dataset, outside its test fold
    if cfg.eval.threshold_choice is ThresholdChoice.VALIDATION and unit.eval_dataset == unit.dataset:
        chosen = thresholds.validation_thresholds(table, store, model, meta, unit.fold, cfg.eval,
                                                  cfg.train.batch_size)
    write_table(location.as_path(unit.out), arrow)
    rec = record(stage=STAGE, name=catalog.rel(location.as_path(unit.out)), identity=_unit_config(cfg),
                 inputs={}, code=code_key("stages.evaluate"),
                 extra={"random_weights": store.random_weights, "thresholds": chosen})
    rec["key"] = unit.key
    write_provenance(location.as_path(unit.out), rec)
    return {"unit": unit.name, "path": unit.out, "frames": int(len(test)),
            "no_face": int((~face).sum()), "seconds": round(time.perf_counter() - t0, 3),
            "random_weights": bool(store.random_weights)}


def _prior_rows(cfg: RunConfig, catalog: Catalog) -> pd.DataFrame:
    rows = []
    for fold in manifests.test_folds(catalog, cfg.dataset.name):
        metrics = (read_provenance(catalog.prior(cfg, fold)) or {}).get("metrics") or {}
        rows += [{"fold": fold, "metric": k, "value": float(v)} for k, v in sorted(metrics.items())
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "fold"]
    return pd.DataFrame(rows, columns=["fold", "metric", "value"])


def _scored(pred: pd.DataFrame, catalog: Catalog, cfg: RunConfig) -> dict[str, list[str]]:
    """AU columns scored per eval dataset: the models' AUs that the eval dataset labels."""
    model_aus = [c[:-5] for c in pred.columns if c.endswith("_prob")]
    out = mixed_eval.scored_members(cfg, model_aus) if mix.is_mix(cfg) else {}
    for ev in [e for e in pred["eval_dataset"].unique() if e not in out]:
        labelled = set(manifests.au_set(catalog, ev).columns)
        out[ev] = [a for a in model_aus if a in labelled]
        if not out[ev]:
            raise ConfigError(f"dataset '{ev}' labels none of the models' AUs {model_aus}")
    return out


def clean(cfg: RunConfig, catalog: Catalog) -> list[str]:
    """Remove the report partitions of this dataset's runs that a killed evaluate left
    incomplete (no `runs` row); called under the stage's exclusive lock."""
    return [catalog.rel(p) for p in tables.remove_incomplete_runs(catalog, cfg.dataset.name)]


def finish(cfg: RunConfig, catalog: Catalog, plan: Plan, results: list[UnitResult]) -> dict:
    t0, name = time.perf_counter(), cfg.dataset.name
    units: list[EvalUnit] = plan.context["units"]
    ok = [r for r in results if r.ok]
    summary = {"dataset": name, "units": [u.name for u in units],
               "evaluated": [r.unit for r in ok], "reports": str(catalog.reports)}
    missing = [u.name for u in units if trusted(location.as_path(u.out), u.key) is None]
    if missing:  # a unit failed: no run is written from partial predictions
        return summary | {"skipped": False, "run": None, "incomplete": missing}
    unit_keys = {u.name: u.key for u in units}
    inputs_key = fingerprint({"units": unit_keys, "eval": cfg.section("eval"),
                              "code": code_key("stages.evaluate")}
                             | ({"request": eval_id(cfg)} if cfg.dataset.subjects else {}))
    last = tables.latest(catalog, "runs", name, eval_id(cfg)).to_pylist()
    if not ok and last and last[0]["inputs_key"] == inputs_key:
        return summary | {"skipped": True, "run": last[0]["run"],
                          "random_weights": bool(last[0]["random_weights"])}
    pred = pd.concat([location.read_parquet(u.out).to_pandas() for u in units], ignore_index=True)
    if mix.is_mix(cfg):  # the mix's rows scored per member, on the AUs each labels
        pred = mixed_eval.split_members(pred, cfg)
    scored = _scored(pred, catalog, cfg)
    frames = _report_frames(cfg, catalog, pred, scored, units)
    random_weights = any((read_provenance(location.as_path(u.out)) or {}).get("random_weights", False)
                         for u in units)
    timings = {r.unit: round(r.seconds, 3) for r in ok}
    run_id, written = _write_run(cfg, catalog, frames, unit_keys, {
        "config_key": eval_id(cfg), "inputs_key": inputs_key, "random_weights": random_weights,
        "variants": _variants(pred), "eval_datasets": sorted(scored), "n_units": len(units)},
        timings, t0)
    avg = frames["metrics"]
    avg = avg[(avg.au == "Avg") & (avg.fold == scoring.MEAN)]
    return summary | {"skipped": False, "run": run_id, "random_weights": random_weights,
                      "written": written, "frames": int(len(pred)) // max(len(_variants(pred)), 1),
                      "no_face": int((~pred["face_found"]).sum()),
                      "avg_f1": {f"{r.eval_dataset}/{r.variant}": round(float(r.f1), 4)
                                 for r in avg.itertuples()},
                      "significance": frames["significance"].to_dict("records")}


def _variants(pred: pd.DataFrame) -> list[str]:
    return [v.value for v in Variant if v.value in set(pred["variant"])]


def _report_frames(cfg: RunConfig, catalog: Catalog, pred: pd.DataFrame, scored: dict,
                   units: list[EvalUnit]) -> dict[str, pd.DataFrame]:
    """Every report table of one run, from its predictions (store.tables.TABLES but `runs`)."""
    n_aus = sum(c.endswith("_prob") for c in pred.columns)
    metrics = scoring.metric_rows(pred, scored, cfg.eval.threshold)
    significance = scoring.significance_rows(pred, scored, cfg.eval)
    comparison = pd.DataFrame()
    if mix.is_mix(cfg):
        metrics = pd.concat([metrics, mixed_eval.pooled_rows(pred, cfg, cfg.eval.threshold)],
                            ignore_index=True)
        comparison, versus_single = mixed_eval.comparison(pred, cfg, cfg.eval)
        significance = pd.concat([significance, versus_single], ignore_index=True)
    return {
        "predictions": pred,
        "metrics": metrics,
        "significance": significance,
        "cooccurrence": scoring.cooccurrence_rows(pred, scored),
        "complexity": scoring.complexity_rows(_variants(pred), n_aus),
        "prior_metrics": _prior_rows(cfg, catalog),
        "comparison": comparison,
        "calibration": calibration.calibration_rows(pred, scored),
        "groups": groups.run_rows(pred, scored, cfg),
        "thresholds": thresholds.threshold_rows(
            pred, scored, thresholds.given([(u.variant, u.fold, u.out) for u in units]), cfg.eval),
    }


def _write_run(cfg: RunConfig, catalog: Catalog, frames: dict[str, pd.DataFrame],
               unit_keys: dict[str, str], facts: dict, timings: dict, t0: float
               ) -> tuple[str, dict[str, str]]:
    """Append one new run's partitions of every table, the `runs` row last (it marks the run
    complete); (run id, {table: partition written})."""
    name, run_id, config = cfg.dataset.name, new_run_id(), cfg.section("eval")
    written = {}
    for table, df in frames.items():
        if len(df):
            arrow = pa.Table.from_pandas(df, preserve_index=False)
            written[table] = str(tables.append(catalog, table, name, run_id, arrow,
                                               stage=STAGE, config=config, inputs=unit_keys))
    timings = timings | {"finish": round(time.perf_counter() - t0, 3)}
    runs = pa.Table.from_pylist([{
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config_key": facts["config_key"],
        "config_json": json.dumps(json.loads(cfg.model_dump_json()), sort_keys=True),
        "code_version": code_key("stages.evaluate"), "inputs_json": json.dumps(unit_keys, sort_keys=True),
        "inputs_key": facts["inputs_key"], "timings_json": json.dumps(timings, sort_keys=True),
        "random_weights": facts["random_weights"], "variants": facts["variants"],
        "eval_datasets": facts["eval_datasets"], "n_units": facts["n_units"]}])
    written["runs"] = str(tables.append(catalog, "runs", name, run_id, runs, stage=STAGE,
                                        config=config, inputs=unit_keys))  # last: run complete
    return run_id, written


def format_summary(summary: dict) -> str:
    from store.provenance import RANDOM_WEIGHTS_BANNER

    lines = [RANDOM_WEIGHTS_BANNER] if summary.get("random_weights") else []
    if summary.get("incomplete"):
        return (f"evaluate, dataset {summary['dataset']}: NO RUN WRITTEN: predictions missing for "
                f"{', '.join(summary['incomplete'])}")
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
    lines.append(f"  query: aunet query --store {location.as_path(summary['reports']).parent} "
                 f"\"SELECT variant, au, f1 FROM metrics WHERE fold = 'mean' ORDER BY variant, au\"")
    return "\n".join(lines)
