"""Dataset readers: each turns a dataset on disk into manifest rows (a DataFrame).

`read_dataset` dispatches on the config's layout; `pipeline.manifest.finalize` then types,
checks and numbers the rows. Readers report bad input through the `ManifestReport`, which
raises (naming file and line) or counts, as the config asks.
"""
from __future__ import annotations

import pandas as pd

from pipeline.config import DatasetConfig, Layout
from pipeline.errors import MissingInput
from pipeline.manifest import ManifestReport

# Imported statically (not by name) so that the manifest stage's code key covers every reader.
from pipeline.datasets import generic  # noqa: E402  (first: demo reads through it)
from pipeline.datasets import affwild2, bp4d, demo, disfa, listfmt  # noqa: E402

_READERS = {Layout.BP4D: bp4d, Layout.DISFA: disfa, Layout.AFFWILD2: affwild2,
            Layout.LIST: listfmt, Layout.MANIFEST: generic, Layout.DEMO: demo}

# Layouts whose labels carry intensities (an AUxx_intensity column per AU).
WITH_INTENSITY = {Layout.DISFA}


def read_dataset(cfg: DatasetConfig, report: ManifestReport) -> pd.DataFrame:
    """Rows for every labelled frame, before folds are assigned (columns: see manifest.py)."""
    if not cfg.root.exists() and cfg.layout is not Layout.DEMO:
        raise MissingInput(f"dataset '{cfg.name}': root folder not found: {cfg.root} "
                              "(set dataset.root)")
    return _READERS[cfg.layout].read(cfg, report)
