"""The one catalog that names every artifact.

Stages never build paths: they ask the catalog, which derives each path from (dataset, stage,
parameters). Layout under the store root:

    {root}/{dataset}/manifest/manifest.parquet          (+ .provenance.json, report json)
    {root}/{dataset}/faces/{faces_id}/crops.zarr        aligned crops, boxes, keypoints, flags
    {root}/{dataset}/features/{backbone}-{weights_id}/features.zarr
    {root}/{dataset}/prior/fold{f}/{prior_id}.pt        VAE label prior (+ metrics)
    {root}/{dataset}/models/{variant}/fold{f}/{head_id}/epoch{e}.pt, final.pt
    {root}/reports/{table}/dataset={d}/run={run}/part-0.parquet   (hive-partitioned, append-only)
    {root}/reports/rendered/{dataset}/...               Markdown, HTML and PNG renderings
"""
from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from store.provenance import fingerprint


class StoreLocked(RuntimeError):
    pass


_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def _safe(part: str) -> str:
    return _SAFE.sub("_", str(part))


def new_run_id() -> str:
    """Sortable, unique id for one evaluation/report run (partitions are never rewritten)."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    return f"{stamp}-{os.getpid()}"


@dataclass(frozen=True)
class Catalog:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    def dataset_dir(self, dataset: str) -> Path:
        return self.root / _safe(dataset)

    # -- stage 0: manifest ------------------------------------------------------------------
    def manifest(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / "manifest" / "manifest.parquet"

    def manifest_report(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / "manifest" / "manifest.report.json"

    # -- stage 1: faces -------------------------------------------------------------------------
    def crops(self, dataset: str, faces_params: dict) -> Path:
        detector = _safe(faces_params.get("detector", "faces"))
        return self.dataset_dir(dataset) / "faces" / f"{detector}-{fingerprint(faces_params)[:10]}" / "crops.zarr"

    # -- stage 2: features ----------------------------------------------------------------------
    def features(self, dataset: str, backbone: str, weights_id: str) -> Path:
        return self.dataset_dir(dataset) / "features" / f"{_safe(backbone)}-{_safe(weights_id)}" / "features.zarr"

    def latest_features(self, dataset: str, backbone: str) -> Path:
        """The newest features.zarr of (dataset, backbone), whatever its weights; later stages
        read the store the features stage wrote last."""
        base = self.dataset_dir(dataset) / "features"
        found = sorted(base.glob(f"{_safe(backbone)}-*/features.zarr"),
                       key=lambda p: (p / "zarr.json").stat().st_mtime if (p / "zarr.json").exists() else 0)
        if not found:
            raise FileNotFoundError(f"no {backbone} feature store for dataset '{dataset}' under "
                                    f"{base}; run `aunet features` on it first")
        return found[-1]

    # -- stage 3: label prior -------------------------------------------------------------------
    def prior(self, dataset: str, fold: int, prior_params: dict) -> Path:
        return self.dataset_dir(dataset) / "prior" / f"fold{fold}" / f"vae-{fingerprint(prior_params)[:10]}.pt"

    # -- stage 4: heads -------------------------------------------------------------------------
    def head_dir(self, dataset: str, variant: str, fold: int, head_name: str) -> Path:
        return self.dataset_dir(dataset) / "models" / _safe(variant) / f"fold{fold}" / _safe(head_name)

    def head_checkpoint(self, dataset: str, variant: str, fold: int, head_name: str,
                        epoch: int | None = None) -> Path:
        d = self.head_dir(dataset, variant, fold, head_name)
        return d / ("final.pt" if epoch is None else f"epoch{epoch:03d}.pt")

    # -- stage 5: reports -----------------------------------------------------------------------
    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def table_dir(self, table: str) -> Path:
        return self.reports / _safe(table)

    def report_part(self, table: str, dataset: str, run_id: str) -> Path:
        return self.table_dir(table) / f"dataset={_safe(dataset)}" / f"run={_safe(run_id)}" / "part-0.parquet"

    def rendered(self, dataset: str) -> Path:
        return self.reports / "rendered" / _safe(dataset)

    # -- concurrency ----------------------------------------------------------------------------
    @contextmanager
    def lock(self, dataset: str, stage: str) -> Iterator[None]:
        """Hold an exclusive lock on (dataset, stage); a second writer is refused, not queued.

        flock is released by the kernel when the process dies, so a killed run never leaves a
        stale lock behind.
        """
        path = self.dataset_dir(dataset) / f".{_safe(stage)}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise StoreLocked(
                f"another run is writing stage '{stage}' of dataset '{dataset}' in {self.root} "
                f"(holder: {holder}); wait for it to finish, or point this run at another store"
            ) from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} since {dt.datetime.now().isoformat(timespec='seconds')}")
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
