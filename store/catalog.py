"""The one catalog that names every artifact, guards it with locks and cleans up after kills.

Stages never build paths: they ask the catalog, which derives each path from the config's
identities (`store.identity`), never from what happens to be on disk. Layout under the root:

    {dataset}/manifest/manifest.parquet                      (+ .provenance.json, report json)
    {dataset}/faces/{detector}-{faces_id}/crops.zarr         aligned crops and per-frame records
    {dataset}/features/{backbone}-{weights}-{features_id}/features.zarr
    {dataset}/prior/fold{k}/vae-{prior_id}.pt                VAE label prior (fold `all`: every
    {dataset}/models/{variant}/fold{k}/{head label}-{head_id}/epoch{e}.pt, final.pt   subject)
    {dataset}/eval/{eval_dataset}/{variant}/fold{k}/{head folder}.parquet   cached predictions
    reports/{table}/dataset={d}/run={run}/part-0.parquet      hive-partitioned, append-only
    reports/rendered/{dataset}/...                            Markdown, HTML and PNG renderings
    .cache/filehash.sqlite                                    content hashes of input files

Locks: a stage holds an exclusive lock on its own artifacts and shared locks on those it reads,
so a writer and its readers exclude each other (a second writer, or a reader of something being
written, is refused with a message, never queued). flock is released by the kernel when a
process dies, so a killed run never leaves a stale lock.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
import shutil
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from pipeline.config import RunConfig, Variant
from pipeline.errors import ConfigError, StoreLocked
from pipeline.folds import fold_name
from pipeline.hashing import use_cache_file
from store import identity as ident
from store import location
from store.stage import Stage  # noqa: F401 (re-exported: the stage list)
from store.provenance import BUILD_MARK, TMP_SUFFIX, recover_dirs

_SAFE = re.compile(r"[^A-Za-z0-9_.+\-]+")
PARTIAL_SUFFIX = ".partial"  # zarr's own temporary chunk files
# where a URL store's process keeps its local cache of input-file hashes
LOCAL_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aunet"



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
        object.__setattr__(self, "root", location.store_root(self.root))
        if self.remote:  # a URL store (store.location); input-file hashes are cached locally
            use_cache_file(LOCAL_CACHE / "filehash.sqlite")
            return
        for p in (self.root, *self.root.parents):  # the store, or the first of its folders that exists
            if p.exists():
                if not p.is_dir():
                    raise ConfigError(f"store {self.root}: {p} is a file, not a folder; set "
                                      "`store` (or --store) to a folder")
                break
        use_cache_file(self.root / ".cache" / "filehash.sqlite")

    @property
    def remote(self) -> bool:
        """Whether the store is an object-store URL (`s3://bucket/prefix`), not a folder."""
        return location.is_remote(self.root)

    def rel(self, path: Path) -> str:
        """A store-relative name (what provenance records hold)."""
        if self.remote:
            return location.relative(path, self.root)
        return ident.relative(path, self.root)

    def dataset_dir(self, dataset: str) -> Path:
        return self.root / _safe(dataset)

    # -- manifest -----------------------------------------------------------------------------
    def manifest(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / Stage.MANIFEST.folder / "manifest.parquet"

    def manifest_report(self, dataset: str) -> Path:
        return self.dataset_dir(dataset) / Stage.MANIFEST.folder / "manifest.report.json"

    # -- faces and features (per dataset; `dataset` defaults to the config's) ------------------
    def crops(self, cfg: RunConfig, dataset: str | None = None) -> Path:
        name = f"{_safe(cfg.faces.detector.value)}-{ident.faces_id(cfg)[:ident.ID_CHARS]}"
        return self.dataset_dir(dataset or cfg.dataset.name) / Stage.FACES.folder / name / "crops.zarr"

    def features(self, cfg: RunConfig, dataset: str | None = None) -> Path:
        name = (f"{_safe(cfg.features.backbone.value)}-{_safe(ident.weights_path_name(cfg))}-"
                f"{ident.features_id(cfg)[:ident.ID_CHARS]}")
        return self.dataset_dir(dataset or cfg.dataset.name) / Stage.FEATURES.folder / name / "features.zarr"

    # -- label prior and heads ------------------------------------------------------------------
    def prior(self, cfg: RunConfig, fold: int) -> Path:
        return (self.dataset_dir(cfg.dataset.name) / Stage.PRIOR.folder / fold_name(fold)
                / f"vae-{ident.prior_id(cfg)[:ident.ID_CHARS]}.pt")

    def head_dir(self, cfg: RunConfig, variant: Variant, fold: int) -> Path:
        v = Variant(variant).value
        return (self.dataset_dir(cfg.dataset.name) / Stage.TRAIN.folder / v / fold_name(fold)
                / _safe(ident.head_label(cfg, variant)))

    def head_checkpoint(self, cfg: RunConfig, variant: Variant, fold: int,
                        epoch: int | None = None) -> Path:
        d = self.head_dir(cfg, variant, fold)
        return d / ("final.pt" if epoch is None else f"epoch{epoch:03d}.pt")

    def predictions(self, cfg: RunConfig, eval_dataset: str, variant: Variant, fold: int) -> Path:
        """The evaluate stage's cached predictions of one head on one dataset's test fold."""
        head = self.head_dir(cfg, variant, fold).name
        return (self.dataset_dir(cfg.dataset.name) / Stage.EVALUATE.folder / _safe(eval_dataset)
                / Variant(variant).value / f"fold{fold}" / f"{head}.parquet")

    # -- reports ----------------------------------------------------------------------------------
    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def table_dir(self, table: str) -> Path:
        return self.reports / _safe(table)

    def report_part(self, table: str, dataset: str, run_id: str) -> Path:
        return self.table_dir(table) / f"dataset={_safe(dataset)}" / f"run={_safe(run_id)}" / "part-0.parquet"

    def rendered(self, dataset: str) -> Path:
        return self.reports / "rendered" / _safe(dataset)

    # -- locks ----------------------------------------------------------------------------------
    def _lock_file(self, dataset: str, stage: str) -> Path:
        return self.dataset_dir(dataset) / ".locks" / f"{_safe(stage)}.lock"

    def _open_lock(self, path: Path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return open(path, "a+")
        except OSError:
            # a read-only store: locking still works on a file opened for reading; with no lock
            # file at all, nobody can be writing here either
            try:
                return open(path, "r")
            except OSError:
                return None

    @contextmanager
    def lock(self, dataset: str, stage: str,
             reads: Iterable[tuple[str, str]] = ()) -> Iterator[None]:
        """Exclusive lock on (dataset, stage) and shared locks on the (dataset, stage) pairs it
        reads. Refused at once (StoreLocked) when another run holds a conflicting lock."""
        with ExitStack() as stack:
            for ds, st in sorted(set(reads) - {(dataset, stage)}):
                stack.enter_context(self._flock(ds, st, shared=True, by=(dataset, stage)))
            stack.enter_context(self._flock(dataset, stage, shared=False, by=(dataset, stage)))
            yield

    @contextmanager
    def read_lock(self, dataset: str, stage: str, by: str) -> Iterator[None]:
        """A shared lock on (dataset, stage) alone, for a command `by` that reads its artifacts
        outside any stage (export reads a head that `train --force` may be replacing)."""
        with self._flock(dataset, stage, shared=True, by=(dataset, by)):
            yield

    @contextmanager
    def _flock(self, dataset: str, stage: str, shared: bool, by: tuple[str, str]) -> Iterator[None]:
        if self.remote:  # an object store: leases of conditional writes (store/leases.py)
            with self._lease(dataset, stage, shared, by):
                yield
            return
        fh = self._open_lock(self._lock_file(dataset, stage))
        if fh is None:
            yield
            return
        try:
            fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            what = (f"stage '{by[1]}' of dataset '{by[0]}' reads stage '{stage}' of dataset "
                    f"'{dataset}', which another run is writing" if shared else
                    f"another run is writing or reading stage '{stage}' of dataset '{dataset}'")
            raise StoreLocked(f"{what} in {self.root}{f' ({holder})' if holder else ''}; wait for "
                              "it to finish, or point this run at another store") from None
        if shared:  # no writer of (dataset, stage) now: undo a replacement a kill interrupted
            sub = Stage(stage).folder
            if sub:
                try:
                    recover_dirs(self.dataset_dir(dataset) / sub)
                except OSError:  # a read-only store: its owner's next run recovers it
                    pass
        try:
            if not shared and fh.writable():
                fh.seek(0)
                fh.truncate()
                fh.write(f"writer pid {os.getpid()} since "
                         f"{dt.datetime.now().isoformat(timespec='seconds')}")
                fh.flush()
            yield
        finally:
            if not shared and fh.writable():
                fh.truncate(0)
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    def _lease(self, dataset: str, stage: str, shared: bool, by: tuple[str, str]):
        from store import leases

        if not hasattr(self.root.fs, "call_s3"):
            raise ConfigError(f"store {self.root}: stage locks on an object store need the S3 "
                              "API's conditional writes; give an s3:// URL (AWS, MinIO, Ceph, "
                              "SeaweedFS) or a folder")

        base = self.dataset_dir(dataset) / ".locks"
        what = (f"stage '{by[1]}' of dataset '{by[0]}' reads stage '{stage}' of dataset "
                f"'{dataset}', which another run is writing" if shared else
                f"another run is writing or reading stage '{stage}' of dataset '{dataset}'")
        refused = f"{what} in {self.root}"
        take = leases.reader if shared else leases.writer
        return take(base / f"{_safe(stage)}.lease", base / f"{_safe(stage)}.readers",
                    f"aunet {by[1]}", refused)

    # -- debris of killed runs ----------------------------------------------------------------------
    def clean(self, dataset: str, stage: str) -> list[str]:
        """Remove what a killed run of (dataset, stage) left: temporary files and folders of
        atomic writes, zarr's partial chunk files. Call only under that stage's exclusive lock.
        Returns the store-relative names removed."""
        sub = Stage(stage).folder
        base = self.dataset_dir(dataset) / sub if sub else self.rendered(dataset)
        return self.remove_debris(base)

    def remove_debris(self, base: Path) -> list[str]:
        if self.remote:  # no renames, no temporary objects: only what a killed upload left
            return [self.rel(p) for p in location.remove_debris(base)]
        removed = []
        if not base.exists():
            return removed
        # a folder replacement a kill interrupted: the old folder back, or the new one kept
        removed += [self.rel(p) for p in recover_dirs(base)]
        for p in sorted(base.rglob("*"), reverse=True):  # deepest first
            name = p.name
            if BUILD_MARK in name and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.is_file() and (name.endswith(TMP_SUFFIX) and name.startswith(".")
                                  or name.endswith(PARTIAL_SUFFIX)):
                p.unlink(missing_ok=True)
            else:
                continue
            removed.append(self.rel(p))
        return removed
