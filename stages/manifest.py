"""Stage 0: read a dataset on disk into the manifest table (one row per frame)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from pipeline.config import RunConfig
from pipeline.datasets import WITH_INTENSITY, read_dataset
from pipeline.folds import assign_folds
from pipeline.labels import positive_rates
from pipeline.manifest import ManifestReport, au_set_of, finalize, label_matrix
from store.catalog import Catalog
from store.provenance import (code_version, fingerprint, is_current, read_provenance,
                              write_json, write_provenance, write_table)

STAGE = "manifest"
CODE_MODULES = ("stages.manifest", "pipeline.manifest", "pipeline.folds", "pipeline.datasets",
                "pipeline.datasets.generic", "pipeline.datasets.demo", "pipeline.datasets.bp4d",
                "pipeline.datasets.disfa", "pipeline.datasets.affwild2", "pipeline.datasets.listfmt")


@dataclass(frozen=True)
class ManifestUnit:
    dataset: str


def _params(cfg: RunConfig) -> dict:
    return cfg.section("dataset")


def _inputs(cfg: RunConfig) -> dict[str, str]:
    """Cheap fingerprint of the dataset's label files: names, sizes and mtimes."""
    d = cfg.dataset
    files = [p for p in (d.manifest_file, d.list_paths, d.list_labels) if p and p.exists()]
    if not files and d.root.exists():
        files = sorted(p for p in d.root.rglob("*") if p.suffix.lower() in (".csv", ".txt", ".parquet", ".json"))
    return {"label_files": fingerprint([(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files])}


def _code() -> str:
    return code_version(*CODE_MODULES)


def plan(cfg: RunConfig, catalog: Catalog, *, force: bool = False) -> list[ManifestUnit]:
    out = catalog.manifest(cfg.dataset.name)
    if not force and is_current(out, config=_params(cfg), code=_code(), inputs=_inputs(cfg)):
        return []
    return [ManifestUnit(cfg.dataset.name)]


def run_unit(cfg: RunConfig, catalog: Catalog, unit: ManifestUnit) -> dict:
    d = cfg.dataset
    report = ManifestReport(policy=d.on_bad_input)
    df = read_dataset(d, report)
    df = assign_folds(df, d, report) if not df.empty else df
    table = finalize(df, d.name, d.au_set, report, intensity=d.layout in WITH_INTENSITY)
    out = catalog.manifest(d.name)
    write_table(out, table)
    summary = summarize(table, d.au_set) | {"report": report.as_dict(table.num_rows)}
    write_json(catalog.manifest_report(d.name), summary)
    write_provenance(out, stage=STAGE, config=_params(cfg), code=_code(), inputs=_inputs(cfg),
                     extra={"rows": table.num_rows})
    return summary


def summarize(table, au_set) -> dict:
    df = table.to_pandas()
    y = label_matrix(df, au_set)
    rates = positive_rates(y)
    return {
        "frames": int(len(df)),
        "subjects": int(df["subject"].nunique()),
        "videos": int(df["video_id"].nunique()),
        "folds": {int(k): int(v) for k, v in df["fold"].value_counts().sort_index().items()},
        "positive_rate": {c: (None if np.isnan(r) else round(float(r), 4))
                          for c, r in zip(au_set.columns, rates)},
        "unknown_labels": int(np.isnan(y).sum()),
    }


def finish(cfg: RunConfig, catalog: Catalog, results: list[dict]) -> dict:
    if results:
        summary = results[0]
        summary["skipped"] = False
    else:
        import json

        summary = json.loads(catalog.manifest_report(cfg.dataset.name).read_text())
        summary["skipped"] = True
    summary["path"] = str(catalog.manifest(cfg.dataset.name))
    return summary


def run(cfg: RunConfig, catalog: Catalog, *, force: bool = False, progress: bool = True,
        client=None) -> dict:
    with catalog.lock(cfg.dataset.name, STAGE):
        units = plan(cfg, catalog, force=force)
        return finish(cfg, catalog, [run_unit(cfg, catalog, u) for u in units])


def built_path(catalog: Catalog, dataset: str):
    """The manifest's path; raises naming it when the manifest was never built."""
    path = catalog.manifest(dataset)
    if not path.exists():
        raise FileNotFoundError(f"no manifest for dataset '{dataset}' at {path}; run `aunet manifest` first")
    return path


def load(catalog: Catalog, dataset: str):
    """The manifest as an Arrow table (raises naming the path when it was never built)."""
    return pq.read_table(built_path(catalog, dataset))


def au_set(catalog: Catalog, dataset: str):
    """The manifest's AU set, from the Parquet schema alone (no rows read)."""
    return au_set_of(pq.read_schema(built_path(catalog, dataset)))


def manifest_key(catalog: Catalog, dataset: str) -> str:
    rec = read_provenance(catalog.manifest(dataset))
    return rec["key"] if rec else "missing"


def format_summary(summary: dict) -> str:
    """The manifest stage's summary as text: counts, folds, positive rates, what was left out."""
    report = summary.get("report", {})
    head = f"manifest: {summary.get('path', '')}"
    if summary.get("skipped"):
        head += "  [skipped (up to date)]"
    lines = [head,
             f"  frames {summary['frames']}   subjects {summary['subjects']}   "
             f"videos {summary['videos']}   unknown labels {summary.get('unknown_labels', 0)}"]
    # JSON round trips turn the fold numbers into strings: sort them as numbers.
    folds = sorted(summary.get("folds", {}).items(), key=lambda kv: int(kv[0]))
    lines.append("  frames per fold: " + "  ".join(
        f"{k}{' (never tested)' if int(k) == 0 else ''}: {v}" for k, v in folds))
    rates = summary.get("positive_rate", {})
    lines.append("  positive rate per AU:")
    cells = [f"{c} {'-' if r is None else f'{r:.3f}'}" for c, r in rates.items()]
    lines += ["    " + "   ".join(cells[i:i + 6]) for i in range(0, len(cells), 6)]
    left = report.get("left_out", {})
    lines.append(f"  frames left out: {report.get('left_out_total', 0)}")
    for reason, n in sorted(left.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {reason}: {n}")
        lines += [f"      e.g. {ex}" for ex in report.get("examples", {}).get(reason, [])[:3]]
    for what, n in sorted(report.get("notes", {}).items()):
        lines.append(f"  note: {what}: {n}")
    return "\n".join(lines)
