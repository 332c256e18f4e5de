"""Report tables: declared, versioned Arrow schemas; append-only hive-partitioned Parquet.

Each table lives under `catalog.table_dir(name)` as `dataset={d}/run={run}/part-0.parquet`. The
partition keys `dataset` (the dataset the models were trained on) and `run` (the run id, from
`store.catalog.new_run_id`) are not stored inside the files: they come from the folder names,
for pyarrow and DuckDB alike. A partition is written once and never overwritten.

A run is complete when its `runs` row exists: the evaluate stage writes it last, and `latest`
only returns rows of complete runs.
"""
from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from pipeline.errors import UserError
from store import location
from store.catalog import Catalog
from store.codekey import code_key
from store.provenance import record, write_provenance, write_table

SCHEMA_VERSION = "2"  # 2: runs.config_key, metrics.positive_rate and its all_positive rows
PARTITION_KEYS = ("dataset", "run")
PARTITIONING = pa.schema([("dataset", pa.string()), ("run", pa.string())])
PART_GLOB = "dataset=*/run=*/part-*.parquet"

_S, _F, _I, _B = pa.string(), pa.float64(), pa.int64(), pa.bool_()
_FIELDS: dict[str, list[tuple[str, pa.DataType]]] = {
    "runs": [("created_utc", _S), ("config_key", _S), ("config_json", _S), ("code_version", _S),
             ("inputs_json", _S),
             ("inputs_key", _S), ("timings_json", _S), ("random_weights", _B),
             ("variants", pa.list_(_S)), ("eval_datasets", pa.list_(_S)), ("n_units", _I)],
    # + AUxx_prob float32, AUxx_pred int8, AUxx_label int8 per AU of the models' AU set
    "predictions": [("eval_dataset", _S), ("variant", _S), ("fold", pa.int8()), ("head_name", _S),
                    ("row", _I), ("subject", _S), ("video_id", _S), ("frame", _I),
                    ("face_found", _B)],
    "metrics": [("eval_dataset", _S), ("variant", _S), ("fold", _S), ("au", _S), ("f1", _F),
                ("precision", _F), ("recall", _F), ("accuracy", _F), ("n", _I), ("n_pos", _I),
                ("tp", _I), ("fp", _I), ("fn", _I), ("tn", _I), ("n_no_face", _I),
                ("n_unknown", _I), ("threshold", _F), ("positive_rate", _F)],
    "significance": [("eval_dataset", _S), ("baseline", _S), ("variant", _S), ("unit", _S),
                     ("test", _S), ("n", _I), ("t", _F), ("p", _F), ("mean_a", _F),
                     ("mean_b", _F), ("diff", _F), ("ci_lo", _F), ("ci_hi", _F),
                     ("level", _F), ("n_boot", _I), ("seed", _I)],
    "cooccurrence": [("eval_dataset", _S), ("variant", _S), ("fold", _S), ("l2", _F),
                     ("l2_rms", _F), ("dependency_f1", _F), ("edges_pred", _I),
                     ("edges_label", _I), ("edges_matched", _I), ("n", _I), ("min_r", _F),
                     ("alpha", _F), ("au_columns", pa.list_(_S)),
                     ("r_pred", pa.list_(pa.float32())), ("r_label", pa.list_(pa.float32()))],
    "complexity": [("variant", _S), ("n_aus", _I), ("trainable_params", _I),
                   ("gflops", _F), ("gmacs", _F), ("input_shape", _S),
                   ("paper_params_m", _F), ("paper_gflops", _F), ("note", _S)],
    "prior_metrics": [("fold", _I), ("metric", _S), ("value", _F)],
    # mixed runs: each member's single-dataset model beside the mixed model, same frames and AUs
    "comparison": [("eval_dataset", _S), ("variant", _S), ("fold", _S), ("au", _S),
                   ("f1_single", _F), ("f1_mixed", _F), ("diff", _F), ("n", _I), ("single_run", _S)],
    # ECE, Brier and reliability bins per AU (au 'all': every frame-AU pair), fold or 'pooled'
    "calibration": [("eval_dataset", _S), ("variant", _S), ("fold", _S), ("au", _S), ("ece", _F),
                    ("brier", _F), ("n", _I), ("n_pos", _I), ("mean_prob", _F), ("n_bins", _I),
                    ("bin_count", pa.list_(_I)), ("bin_mean_prob", pa.list_(_F)),
                    ("bin_frac_pos", pa.list_(_F))],
    # eval.threshold_choice: validation: each head's per-AU thresholds and test F1 at them
    "thresholds": [("eval_dataset", _S), ("variant", _S), ("fold", _S), ("au", _S), ("choice", _S),
                   ("threshold", _F), ("source", _S), ("fixed_threshold", _F),
                   ("n_val_subjects", _I), ("val_subjects", pa.list_(_S)), ("n_val_frames", _I),
                   ("n_val_pos", _I), ("f1_validation", _F), ("f1_fixed", _F), ("f1_chosen", _F)],
    # F1 per group of subjects (dataset.subjects), bootstrap CIs, permutation test (Avg rows)
    "groups": [("eval_dataset", _S), ("variant", _S), ("attribute", _S), ("group", _S),
               ("source", _S), ("au", _S), ("n_subjects", _I), ("n_frames", _I), ("status", _S),
               ("f1", _F), ("ci_lo", _F), ("ci_hi", _F), ("level", _F), ("n_boot", _I),
               ("spread", _F), ("p_perm", _F), ("n_perm", _I), ("seed", _I)],
}
TABLES = tuple(_FIELDS)
_AU_FIELD = re.compile(r"^AU\d{2}_(prob|pred|label)$")
_AU_TYPES = {"prob": pa.float32(), "pred": pa.int8(), "label": pa.int8()}


class TableError(UserError, ValueError):
    pass


def schema(name: str, au_columns: list[str] | None = None) -> pa.Schema:
    """The declared schema of a report table (predictions: plus three columns per AU)."""
    if name not in _FIELDS:
        raise TableError(f"unknown report table {name!r}; tables: {', '.join(TABLES)}")
    fields = [pa.field(n, t) for n, t in _FIELDS[name]]
    for au in au_columns or []:
        fields += [pa.field(f"{au}_{kind}", t) for kind, t in _AU_TYPES.items()]
    return pa.schema(fields, metadata={"table": name, "schema_version": SCHEMA_VERSION})


def conform(name: str, dataset: str, run_id: str, table: pa.Table) -> pa.Table:
    """Check and cast a table to its declared schema; drop partition keys (checked first)."""
    for key, value in (("dataset", dataset), ("run", run_id)):
        if key in table.column_names:
            found = set(table.column(key).to_pylist())
            if found - {value}:
                raise TableError(f"table {name}: column {key} holds {sorted(found)}, "
                                 f"but the partition is {key}={value}")
            table = table.drop_columns([key])
    extra = [c for c in table.column_names if c not in dict(_FIELDS[name])]
    aus = []
    if name == "predictions":
        bad = [c for c in extra if not _AU_FIELD.match(c)]
        aus = list(dict.fromkeys(c.rsplit("_", 1)[0] for c in extra if _AU_FIELD.match(c)))
        extra = bad
    if extra:
        raise TableError(f"table {name}: undeclared columns {extra}")
    target = schema(name, aus)
    missing = [f.name for f in target if f.name not in table.column_names]
    if missing:
        raise TableError(f"table {name}: missing columns {missing}")
    try:
        return table.select(target.names).cast(target)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise TableError(f"table {name}: a column does not fit its declared type: {e}") from None


def append(catalog: Catalog, name: str, dataset: str, run_id: str, table: pa.Table, *,
           stage: str = "evaluate", config: dict | None = None,
           inputs: dict[str, str] | None = None) -> Path:
    """Write one new partition atomically, with provenance; an existing one is never replaced."""
    path = catalog.report_part(name, dataset, run_id)
    if path.exists():
        raise FileExistsError(f"report partition already exists (append-only): {path}")
    table = conform(name, dataset, run_id, table)
    write_table(path, table)
    write_provenance(path, record(stage=stage, name=catalog.rel(path), identity=config or {},
                                  inputs=inputs or {}, code=code_key("store.tables"),
                                  extra={"table": name, "schema_version": SCHEMA_VERSION,
                                         "rows": table.num_rows}))
    return path


def remove_incomplete_runs(catalog: Catalog, dataset: str) -> list[Path]:
    """Delete the partitions of `dataset`'s runs that have no `runs` row: what a killed evaluate
    left. Only safe under the dataset's evaluate lock (no run of it is being written)."""
    complete = set(run_ids(catalog, dataset))
    removed = []
    for name in TABLES:
        base = catalog.table_dir(name) / f"dataset={dataset}"
        for part in sorted(base.glob("run=*")) if base.exists() else []:
            if part.name.split("=", 1)[1] not in complete:
                location.remove_tree(part)
                removed.append(part)
    return removed


def part_files(catalog: Catalog, name: str, dataset: str | None = None) -> list[Path]:
    base = catalog.table_dir(name)
    glob = PART_GLOB if dataset is None else f"dataset={dataset}/run=*/part-*.parquet"
    return sorted(base.glob(glob))


def read(catalog: Catalog, name: str, dataset: str | None = None) -> pa.Table:
    """All partitions of a table (with `dataset` and `run` columns); an empty table if none."""
    files = part_files(catalog, name, dataset)
    if not files:
        return _empty(name)
    schemas = [location.parquet_schema(f) for f in files]
    versions = {s.metadata.get(b"schema_version", b"?").decode() for s in schemas}
    if versions - {SCHEMA_VERSION}:
        raise TableError(f"table {name}: partitions with schema versions {sorted(versions)}; "
                         f"this code reads version {SCHEMA_VERSION}: move "
                         f"{catalog.table_dir(name).parent} aside (or use a new store) and run "
                         "`aunet evaluate` again")
    # predictions of different AU sets differ in columns: unify (missing ones read as null)
    unified = pa.unify_schemas(schemas + [PARTITIONING])
    base, fs = location.arrow(catalog.table_dir(name))
    dset = ds.dataset([location.arrow(f)[0] for f in files], schema=unified, format="parquet",
                      partitioning=ds.partitioning(PARTITIONING, flavor="hive"),
                      partition_base_dir=base, filesystem=fs)
    return dset.to_table()


def read_run(catalog: Catalog, name: str, dataset: str, run: str) -> pa.Table:
    """One run's partition of a table (with `dataset` and `run` columns); empty if it has none."""
    path = catalog.report_part(name, dataset, run)
    if not path.exists():
        return _empty(name)
    t = location.read_parquet(path)
    return t.append_column("dataset", pa.array([dataset] * t.num_rows, pa.string())) \
            .append_column("run", pa.array([run] * t.num_rows, pa.string()))


def _empty(name: str) -> pa.Table:
    return pa.table({f.name: pa.array([], f.type) for f in [*schema(name), *PARTITIONING]})


def run_ids(catalog: Catalog, dataset: str) -> list[str]:
    """Complete runs of a dataset (those with a `runs` row), oldest first."""
    return [f.parent.name.split("=", 1)[1] for f in part_files(catalog, "runs", dataset)]


def latest_run(catalog: Catalog, dataset: str, config_key: str | None = None) -> str | None:
    """The newest complete run of `dataset`; with `config_key`, the newest run of exactly that
    evaluation request (store.identity.eval_id), which is what a report of a config renders."""
    ids = run_ids(catalog, dataset)
    if config_key is not None:
        ids = [r for r in ids if location.read_parquet(catalog.report_part("runs", dataset, r),
                                             columns=["config_key"])["config_key"][0].as_py()
               == config_key]
    return max(ids) if ids else None  # run ids sort by their UTC time stamp


def latest(catalog: Catalog, name: str, dataset: str | None = None,
           config_key: str | None = None) -> pa.Table:
    """Rows of `name` from the latest complete run of each dataset (or of `dataset`, and of
    exactly the evaluation request `config_key` when given)."""
    datasets = [dataset] if dataset else sorted(
        {p.parent.parent.name.split("=", 1)[1] for p in part_files(catalog, "runs")})
    files = []
    for d in datasets:
        run = latest_run(catalog, d, config_key)
        path = catalog.report_part(name, d, run) if run else None
        if path is not None and path.exists():
            files.append(path)
    if not files:
        return _empty(name)
    table = read(catalog, name)
    keep = {(p.parent.parent.name.split("=", 1)[1], p.parent.name.split("=", 1)[1]) for p in files}
    mask = [(d, r) in keep for d, r in zip(table.column("dataset").to_pylist(),
                                           table.column("run").to_pylist())]
    return table.filter(pa.array(mask))
