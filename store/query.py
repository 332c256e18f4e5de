"""SQL over the report tables (`aunet query`): one DuckDB view per table, complete runs only.

A run is complete once its `runs` row exists (the evaluate stage writes it last). Partitions of
a run that has none (a killed evaluate, before the next one cleans them up) are never shown, so
queries never count a run twice or see half of one.
"""
from __future__ import annotations

import duckdb

from pipeline.errors import UserError
from store import tables
from store.catalog import Catalog

MAX_QUERY_ROWS = 200  # rows printed by run_query


def _scan(catalog: Catalog, name: str) -> str:
    glob = str(catalog.table_dir(name) / tables.PART_GLOB).replace("'", "''")
    return (f"read_parquet('{glob}', hive_partitioning = true, union_by_name = true, "
            "hive_types = {'dataset': VARCHAR, 'run': VARCHAR})")


def connect(catalog: Catalog) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB with one view per report table that has rows of complete runs."""
    con = duckdb.connect()
    if not tables.part_files(catalog, "runs"):
        return con  # no complete run yet: no views
    con.execute(f"CREATE VIEW runs AS SELECT * FROM {_scan(catalog, 'runs')}")
    for name in tables.TABLES:
        if name == "runs" or not tables.part_files(catalog, name):
            continue
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM {_scan(catalog, name)} "
                    "WHERE (dataset, run) IN (SELECT dataset, run FROM runs)")
    return con


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
    """Answer SQL over the report tables (views: runs, predictions, metrics, ...)."""
    con = connect(catalog)
    try:
        res = con.execute(sql)
    except duckdb.Error as e:
        have = [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()]
        raise UserError(f"query failed: {e}\n(tables with data under {catalog.reports}: "
                         f"{', '.join(have) or 'none'})") from None
    if res.description is None:
        return "OK"
    columns = [d[0] for d in res.description]
    rows = res.fetchmany(MAX_QUERY_ROWS + 1)
    text = format_rows(columns, rows[:MAX_QUERY_ROWS])
    if len(rows) > MAX_QUERY_ROWS:
        text += f"\n... (more than {MAX_QUERY_ROWS} rows; add LIMIT or aggregate)"
    return text + f"\n({min(len(rows), MAX_QUERY_ROWS)} rows)"
