"""`aunet query` is read-only (store/query.py): no statement writes a file or changes state;
bad SQL, an empty string or a torn partition is one line."""
from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.errors import UserError
from store import tables
from store.catalog import Catalog
from store.query import run_query

RUN = "20260101T000000000000-1"


@pytest.fixture()
def store(tmp_path):
    cat = Catalog(tmp_path / "store")
    runs = {c: [None] for c in tables.schema("runs").names if c not in ("dataset", "run")}
    runs |= {"random_weights": [False], "variants": [["au_fan"]], "eval_datasets": [["d"]],
             "n_units": [1], "created_utc": ["2026-01-01T00:00:00"]}
    tables.append(cat, "runs", "d", RUN, pa.table(runs))
    metrics = {c: [1] for c in ("n", "n_pos", "tp", "fp", "fn", "tn", "n_no_face", "n_unknown")}
    metrics |= {"eval_dataset": ["d"], "variant": ["au_fan"], "fold": ["mean"], "au": ["Avg"],
                "f1": [0.5], "precision": [0.5], "recall": [0.5], "accuracy": [0.5],
                "threshold": [0.5], "positive_rate": [0.2]}
    tables.append(cat, "metrics", "d", RUN, pa.table(metrics))
    return cat


def _files(cat: Catalog) -> dict:
    return {p: p.stat().st_mtime_ns for p in cat.root.rglob("*") if p.is_file()}


def test_select_works(store):
    out = run_query(store, "SELECT variant, f1 FROM metrics")
    assert out.splitlines()[2].split() == ["au_fan", "0.5"] and out.endswith("(1 rows)")
    assert "au_fan" in run_query(store, "PIVOT metrics ON au USING first(f1) GROUP BY variant")


@pytest.mark.parametrize("sql", [
    "COPY (SELECT 'x' AS eval_dataset, 1.0 AS f1) TO '{part}' (FORMAT parquet)",
    "COPY (SELECT 1 AS a) TO '{tmp}/stolen.csv'",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "ATTACH ':memory:' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "DROP VIEW metrics",
    "CREATE TABLE t AS SELECT 1",
    "CREATE TEMP TABLE t AS SELECT 1",
    "CREATE VIEW metrics2 AS SELECT 1",
    "SET enable_external_access = true",
    "EXPORT DATABASE '{tmp}/exported'",
    "SELECT * FROM read_csv('/etc/passwd')",
])
def test_no_statement_writes_or_changes_state(store, tmp_path, sql):
    part = tables.part_files(store, "metrics")[0]
    before = _files(store)
    with pytest.raises(UserError) as e:
        run_query(store, sql.format(part=part, tmp=tmp_path))
    assert "\n" not in str(e.value)
    assert _files(store) == before  # no file written or touched in the store
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # nor beside it
    assert run_query(store, "SELECT f1 FROM metrics").splitlines()[2].strip() == "0.5"


@pytest.mark.parametrize("sql", ["", "   ", " ; "])
def test_empty_query_is_one_line(store, sql):
    with pytest.raises(UserError, match="the query is empty") as e:
        run_query(store, sql)
    assert "\n" not in str(e.value)


def test_bad_sql_is_one_line(store):
    with pytest.raises(UserError, match="query failed") as e:
        run_query(store, "SELECT * FROM nosuchtable")
    assert "\n" not in str(e.value) and "metrics" in str(e.value)


def test_corrupt_partition_is_named_in_one_line(store):
    part = tables.part_files(store, "metrics")[0]
    part.write_bytes(part.read_bytes()[:40])  # a torn copy
    with pytest.raises(UserError) as e:
        run_query(store, "SELECT * FROM metrics")
    assert "\n" not in str(e.value) and str(part) in str(e.value)
