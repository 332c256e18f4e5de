"""Dataset readers: each turns a dataset on disk into manifest rows (a DataFrame).

`read_dataset` dispatches on the config's layout; `pipeline.manifest.finalize` then types,
checks and numbers the rows. Readers report bad input through the `ManifestReport`, which
raises (naming file and line) or counts, as the config asks.
"""
from __future__ import annotations

import importlib

import pandas as pd

from pipeline.config import DatasetConfig, Layout
from pipeline.manifest import ManifestReport

_READERS = {
    Layout.BP4D: "pipeline.datasets.bp4d",
    Layout.DISFA: "pipeline.datasets.disfa",
    Layout.AFFWILD2: "pipeline.datasets.affwild2",
    Layout.LIST: "pipeline.datasets.listfmt",
    Layout.MANIFEST: "pipeline.datasets.generic",
    Layout.DEMO: "pipeline.datasets.demo",
}

# Layouts whose labels carry intensities (an AUxx_intensity column per AU).
WITH_INTENSITY = {Layout.DISFA}


def read_dataset(cfg: DatasetConfig, report: ManifestReport) -> pd.DataFrame:
    """Rows for every labelled frame, before folds are assigned (columns: see manifest.py)."""
    if not cfg.root.exists() and cfg.layout is not Layout.DEMO:
        raise FileNotFoundError(f"dataset '{cfg.name}': root folder not found: {cfg.root}")
    module = importlib.import_module(_READERS[cfg.layout])
    return module.read(cfg, report)
