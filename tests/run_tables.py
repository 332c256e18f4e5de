"""Two runs' report tables side by side: every table of a store, less what differs between runs
by design, sorted, so that a run on a cluster, on an S3 store or after a kill can be compared
with a local run's, bit for bit (one thread count everywhere: docs/architecture.md)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from store import tables
from store.catalog import Catalog

# when, how long, and where (the config names the store and the scheduler address; the key of
# what was asked for, config_key, is equal)
VOLATILE = {"runs": ["created_utc", "timings_json", "config_json"]}


def report_tables(store: str | Path | Catalog) -> dict[str, pa.Table]:
    """Every report table of the store (a folder, a URL or its catalog)."""
    catalog = store if isinstance(store, Catalog) else Catalog(store)
    out = {}
    for name in tables.TABLES:
        t = tables.read(catalog, name).drop_columns(["run", *VOLATILE.get(name, [])])
        out[name] = t.sort_by([(c, "ascending") for c in t.column_names
                               if pa.types.is_string(t.schema.field(c).type)
                               or pa.types.is_integer(t.schema.field(c).type)])
    return out


def assert_same_tables(want: dict[str, pa.Table], got: dict[str, pa.Table], what: str) -> None:
    assert want["metrics"].num_rows and want["predictions"].num_rows
    for name in tables.TABLES:
        assert got[name].equals(want[name]), f"table {name} differs between the local and {what} run"
