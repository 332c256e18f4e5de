"""Manifests in the store: finding, checking and reading them, and their content keys.

The manifest stage writes `catalog.manifest(dataset)`; every later stage reads it through here.
Its provenance record carries content keys of parts of the table, so a consumer depends only on
what it uses:

    rows           row, subject, video_id, frame, fold of every row (which frames exist)
    train[k]       `rows` plus the labels of every row outside test fold k (what fold k trains on;
                   k = 0: every row, for a model trained on every subject)
    test[k]        the labels of the rows of test fold k (what fold k is scored on)

so a flipped label retrains only the folds that train on it, and a `touch` changes nothing.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.config import Layout, RunConfig
from pipeline.errors import MissingArtifact, StaleArtifact
from pipeline.folds import ALL_SUBJECTS, training_rows
from pipeline.hashing import hash_files
from pipeline.manifest import au_set_of
from store import location
from store.catalog import Catalog
from store.codekey import code_key
from store.identity import frame_key, members, relative
from store.provenance import artifact_key, read_provenance, trusted

STAGE = "manifest"
ROW_COLUMNS = ["row", "subject", "video_id", "frame", "fold"]
LABEL_SUFFIXES = (".csv", ".txt", ".parquet", ".json")


def identity(cfg: RunConfig) -> dict:
    return cfg.section("dataset")


def label_files(cfg: RunConfig) -> dict[str, str]:
    """{name relative to dataset.root: SHA-256} of the files the labels are read from."""
    d = cfg.dataset
    files = [Path(p) for p in (d.manifest_file, d.list_paths, d.list_labels) if p and Path(p).exists()]
    if not files and d.root.exists():
        files = sorted(p for p in d.root.rglob("*")
                       if p.suffix.lower() in LABEL_SUFFIXES and p.is_file())
    digests = hash_files(files)
    return {relative(p, d.root): digests[str(p)] for p in files}


def inputs(cfg: RunConfig) -> dict:
    """What the manifest is read from: the label files, or a mix's member manifests."""
    if cfg.dataset.layout is Layout.MIX:  # {member: its manifest's key}, each checked current
        return {"members": {m.dataset.name: checked(m, Catalog(m.store))["key"]
                            for m in members(cfg)}}
    return {"label_files": label_files(cfg)}


def expected_key(cfg: RunConfig) -> str:
    return artifact_key(identity(cfg), inputs(cfg), code_key("stages.manifest"))


def content_keys(table: pa.Table) -> dict:
    """The manifest's content keys (module docstring), computed from the table."""
    au_cols = au_set_of(table).columns
    df = table.select(ROW_COLUMNS + au_cols).to_pandas()
    rows = frame_key(df, ROW_COLUMNS)
    folds = sorted(int(f) for f in df["fold"].unique() if f > 0)
    train = {str(k): frame_key(df[training_rows(df["fold"].to_numpy(), k)], ["row", *au_cols])
             for k in [ALL_SUBJECTS, *folds]}
    test = {str(k): frame_key(df[df["fold"] == k], ["row", *au_cols]) for k in folds}
    return {"rows": rows, "train": {k: f"{rows}-{v}" for k, v in train.items()}, "test": test}


def path(catalog: Catalog, dataset: str) -> Path:
    """The manifest's path; MissingArtifact naming it when it was never built."""
    p = catalog.manifest(dataset)
    if not p.exists():
        raise MissingArtifact(f"no manifest for dataset '{dataset}' at {p}; run `aunet manifest` "
                              "first")
    return p


def record(catalog: Catalog, dataset: str) -> dict:
    """The manifest's provenance record, after checking the file still holds its bytes."""
    p = path(catalog, dataset)
    rec = read_provenance(p)
    if rec is None or trusted(p, rec.get("key", "")) is None:
        raise StaleArtifact(f"manifest {p} has no valid provenance record or was changed after "
                            f"it was written; run `aunet manifest --force`")
    return rec


def checked(cfg: RunConfig, catalog: Catalog, dataset: str | None = None) -> dict:
    """The record of a manifest that matches the config and the label files as they are now;
    StaleArtifact (saying what to run) otherwise. `dataset`: another dataset's manifest, which
    is only checked for integrity (its config is not this one)."""
    name = dataset or cfg.dataset.name
    rec = record(catalog, name)
    if name == cfg.dataset.name and rec["key"] != expected_key(cfg):
        raise StaleArtifact(f"the manifest of dataset '{name}' was built from other labels, "
                            f"settings or code than this config's; run `aunet manifest` first")
    return rec


def load(catalog: Catalog, dataset: str, columns: list[str] | None = None) -> pa.Table:
    return location.read_parquet(path(catalog, dataset), columns)


@lru_cache(maxsize=4)
def _rows(p: str, version: str, columns: tuple[str, ...]) -> pa.Table:
    return location.read_parquet(p, list(columns))


def rows(catalog: Catalog, dataset: str, columns: list[str]) -> pa.Table:
    """Some columns of the manifest, read once per process and manifest version."""
    p = path(catalog, dataset)
    return _rows(str(p), location.version(p), tuple(columns))


def au_set(catalog: Catalog, dataset: str):
    """The manifest's AU set, from the Parquet schema alone (no rows read)."""
    return au_set_of(location.parquet_schema(path(catalog, dataset)))


def test_folds(catalog: Catalog, dataset: str) -> list[int]:
    folds = load(catalog, dataset, ["fold"]).column("fold").to_numpy()
    return sorted(int(f) for f in np.unique(folds) if f > 0)
