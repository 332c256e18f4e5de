"""SQL over the report tables (`aunet query`): one DuckDB view per table, complete runs only.

A run is complete once its `runs` row exists (the evaluate stage writes it last). Partitions of
a run that has none (a killed evaluate, before the next one cleans them up) are never shown, so
queries never count a run twice or see half of one.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import UserError
from store import location, tables
from store.catalog import Catalog

MAX_QUERY_ROWS = 200  # rows printed by run_query


def _scan(catalog: Catalog, name: str) -> str:
    glob = str(catalog.table_dir(name) / tables.PART_GLOB).replace("'", "''")
    return (f"read_parquet('{glob}', hive_partitioning = true, union_by_name = true, "
            "hive_types = {'dataset': VARCHAR, 'run': VARCHAR})")


def _register(catalog: Catalog, con: duckdb.DuckDBPyConnection) -> None:
    """A URL store: DuckDB reads its Parquet through the store's fsspec filesystem (no httpfs
    extension, nothing downloaded at run time; credentials stay with the filesystem)."""
    if catalog.remote:
        con.register_filesystem(catalog.root.fs)


# Statement types a query may be: reads only. PIVOT parses as MULTI (DuckDB runs its generated
# steps itself); DESCRIBE, SHOW and SUMMARIZE parse as SELECT.
READ_ONLY_STATEMENTS = frozenset({"SELECT", "EXPLAIN", "MULTI"})
EXAMPLE = "e.g. aunet query \"SELECT * FROM runs\""


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _unreadable_parts(catalog: Catalog) -> list[str]:
    """Report partitions that are not readable Parquet (a torn copy, a foreign file)."""
    bad = []
    for name in tables.TABLES:
        for part in tables.part_files(catalog, name):
            try:
                where, fs = location.arrow(part)
                pq.read_metadata(where, filesystem=fs)
            except (OSError, pa.ArrowException):
                bad.append(str(part))
    return bad


def _build_views(catalog: Catalog, db: Path) -> None:
    """A database file with one view per report table that has rows of complete runs."""
    con = duckdb.connect(str(db))
    _register(catalog, con)
    try:
        if not tables.part_files(catalog, "runs"):
            return  # no complete run yet: no views
        con.execute(f"CREATE VIEW runs AS SELECT * FROM {_scan(catalog, 'runs')}")
        for name in tables.TABLES:
            if name == "runs" or not tables.part_files(catalog, name):
                continue
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM {_scan(catalog, name)} "
                        "WHERE (dataset, run) IN (SELECT dataset, run FROM runs)")
    except duckdb.Error as e:
        bad = _unreadable_parts(catalog)
        if bad:
            raise UserError(f"report partition {bad[0]} is not readable Parquet"
                            f"{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''}; delete "
                            "its run=... folder (or rerun `aunet evaluate`) and query again") from None
        raise UserError(f"cannot read the report tables under {catalog.reports}: "
                        f"{_one_line(e)}") from None
    finally:
        con.close()


@contextmanager
def connect(catalog: Catalog) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only DuckDB connection with the report views, closed on exit.

    The views live in a throwaway database file opened read-only (no CREATE, DROP, INSERT,
    ATTACH of the in-memory kind); files outside the report folder cannot be opened
    (enable_external_access off, allowed_directories the reports), extensions are neither
    installed nor loaded, and lock_configuration keeps a query from setting any of it back.
    `run_query` also refuses every statement that is not a read (COPY ... TO would otherwise
    be allowed to write inside the report folder)."""
    with tempfile.TemporaryDirectory(prefix="aunet-query-") as tmp:
        db = Path(tmp) / "views.duckdb"
        _build_views(catalog, db)
        con = duckdb.connect(str(db), read_only=True,
                             config={"autoinstall_known_extensions": False,
                                     "autoload_known_extensions": False})
        _register(catalog, con)
        try:
            reports = str(catalog.reports).rstrip("/") + "/"
            con.execute("SET allowed_directories = [$1]", [reports])
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            yield con
        finally:
            con.close()


def _statement(con: duckdb.DuckDBPyConnection, sql: str):
    """The one read-only statement `sql` holds; UserError otherwise."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise UserError(f"query failed: {_one_line(e)}") from None
    if not statements:
        raise UserError(f"the query is empty; give one SQL statement, {EXAMPLE}")
    if len(statements) > 1:
        raise UserError(f"give one SQL statement at a time ({len(statements)} given)")
    kind = statements[0].type.name
    if kind not in READ_ONLY_STATEMENTS:
        raise UserError(f"queries are read-only: a {kind} statement is refused; use SELECT "
                        f"(report tables are written by the stages only), {EXAMPLE}")
    return statements[0]


def format_rows(columns: list[str], rows: list[tuple]) -> str:
    """An aligned text table (numbers right-aligned)."""
    def cell(v) -> str:
        if v is None:
            return "NULL"
        if isinstance(v, float):
            return f"{v:.6g}"
        return str(v)

    cells = [[cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) and rows
               for i in range(len(columns))]
    def line(vals):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric)).rstrip()
    out = [line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells]
    return "\n".join(out)


def run_query(catalog: Catalog, sql: str) -> str:
    """Answer one read-only SQL statement over the report tables (views: runs, predictions,
    metrics, ...); UserError (one line) for an empty, writing or failing query."""
    with connect(catalog) as con:
        statement = _statement(con, sql)
        try:
            res = con.execute(statement.query)
            columns = [d[0] for d in res.description] if res.description else []
            rows = res.fetchmany(MAX_QUERY_ROWS + 1) if columns else []
        except duckdb.Error as e:
            have = [r[0] for r in con.execute(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()]
            raise UserError(f"query failed: {_one_line(e)} (tables with data under "
                            f"{catalog.reports}: {', '.join(have) or 'none'})") from None
    if not columns:
        return "OK"
    text = format_rows(columns, rows[:MAX_QUERY_ROWS])
    if len(rows) > MAX_QUERY_ROWS:
        text += f"\n... (more than {MAX_QUERY_ROWS} rows; add LIMIT or aggregate)"
    return text + f"\n({min(len(rows), MAX_QUERY_ROWS)} rows)"
