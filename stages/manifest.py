"""Stage 0: read a dataset on disk into the manifest table (one row per frame)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from pipeline.config import RunConfig
from pipeline.datasets import WITH_INTENSITY, read_dataset
from pipeline.folds import assign_folds
from pipeline.labels import positive_rates
from pipeline.manifest import ManifestReport, finalize, label_matrix
from stages.contract import Plan, UnitResult
from store import manifests, mix
from store.catalog import Catalog
from store.codekey import code_key
from store.provenance import record, trusted, write_json, write_provenance, write_table

STAGE = "manifest"


@dataclass(frozen=True)
class ManifestUnit:
    dataset: str

    @property
    def name(self) -> str:
        return f"manifest-{self.dataset}"

    size = 0

    def __str__(self) -> str:  # task names in Prefect
        return self.name


def reads(cfg: RunConfig) -> list[tuple[str, str]]:
    return [(m.dataset.name, "manifest") for m in mix.members(cfg)] if mix.is_mix(cfg) else []


def plan(cfg: RunConfig, catalog: Catalog, *, force: bool = False, select=None) -> Plan:
    out = catalog.manifest(cfg.dataset.name)
    unit = ManifestUnit(cfg.dataset.name)
    if not force and trusted(out, manifests.expected_key(cfg)) is not None:
        return Plan([], skipped=[unit.name])
    return Plan([unit])


def prepare(cfg: RunConfig, catalog: Catalog, plan: Plan) -> None:
    """Nothing to create: the table is written whole by its unit."""


def run_unit(cfg: RunConfig, catalog: Catalog, unit: ManifestUnit, progress=None) -> dict:
    d = cfg.dataset
    report = ManifestReport(policy=d.on_bad_input)
    if mix.is_mix(cfg):  # the members' manifests, read in place (store/mix.py)
        table = mix.build_manifest(cfg)
    else:
        df = read_dataset(d, report)
        df = assign_folds(df, d, report) if not df.empty else df
        table = finalize(df, d.name, d.au_set, report, intensity=d.layout in WITH_INTENSITY)
    out = catalog.manifest(d.name)
    write_table(out, table)
    summary = summarize(table, d.au_set) | {"report": report.as_dict(table.num_rows)}
    write_json(catalog.manifest_report(d.name), summary)
    # label files are hashed after reading: the demo generates its files on first use
    rec = record(stage=STAGE, name=catalog.rel(out), identity=manifests.identity(cfg),
                 inputs=manifests.inputs(cfg),
                 code=code_key("stages.manifest"),
                 extra={"rows": table.num_rows, "keys": manifests.content_keys(table)})
    write_provenance(out, rec)
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


def finish(cfg: RunConfig, catalog: Catalog, plan: Plan, results: list[UnitResult]) -> dict:
    done = [r for r in results if r.ok]
    if done:
        summary = dict(done[0].data, skipped=False)
    elif results:  # the one unit failed: nothing to summarise but the failure
        return {"skipped": False, "path": str(catalog.manifest(cfg.dataset.name)), "frames": 0}
    else:
        summary = json.loads(catalog.manifest_report(cfg.dataset.name).read_text())
        summary["skipped"] = True
    summary["path"] = str(catalog.manifest(cfg.dataset.name))
    return summary


def format_summary(summary: dict) -> str:
    """The manifest stage's summary as text: counts, folds, positive rates, what was left out."""
    if not summary.get("frames") and not summary.get("skipped"):
        return f"manifest: {summary.get('path', '')} not written"
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
