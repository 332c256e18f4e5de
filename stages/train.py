"""Stage 4: train the AU heads on cached features (unit = (variant, fold)).

Training frames of fold k: rows whose fold is not k (fold-0 rows included), with features
(valid) and at least one known label. The loop is `pipeline.learning.training.fit`. A checkpoint is
written after every epoch (only the newest is kept); a killed run resumes from it when it was
made with the same key; `final.pt` marks the end, with provenance, and makes later runs skip the
unit while it stays current (`store.models`). No model selection is done: the fixed schedule's
last epoch is the model, so the test fold is never read. With `eval.threshold_choice:
validation` the fold's validation subjects (`pipeline.folds.validation_rows`) are left out of
its training frames too: the evaluate stage and export choose each AU's threshold on them.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.config import RunConfig, ThresholdChoice, Variant
from pipeline.errors import InputError, StaleArtifact
from pipeline.folds import fold_name, training_rows, validation_rows
from pipeline.labels import class_weights
from pipeline.manifest import au_set_of, label_matrix
from pipeline.models.heads import build_head, load_body
from pipeline.models.vae import FrozenEncoder, load_prior
from pipeline.learning.temporal import triplet_rows
from pipeline.learning.training import fit
from stages.contract import Plan, UnitResult
from store import location, manifests, mix
from store.catalog import Catalog
from store.codekey import code_key
from store.identity import head_identity, head_label
from store.models import (HEAD_CODE, HeadInputs, checked_prior, head_selection, init_head,
                          read_checkpoint, save_checkpoint)
from store.provenance import read_provenance, record, trusted, write_provenance

STAGE = "train"


@dataclass(frozen=True)
class TrainUnit:
    dataset: str
    variant: str
    fold: int
    key: str  # the head's expected key
    fresh: bool = False  # forced: train from scratch, ignoring epoch checkpoints

    @property
    def name(self) -> str:
        return f"{self.variant}-{fold_name(self.fold)}"

    size = 0

    def __str__(self) -> str:
        return self.name


def reads(cfg: RunConfig) -> list[tuple[str, str]]:
    src = [] if cfg.train.init_from is None else [(_init_dataset(cfg), "train")]
    return [(cfg.dataset.name, s) for s in ("manifest", "features", "prior")] + src


def _init_dataset(cfg: RunConfig) -> str:
    from store.identity import init_source

    return init_source(cfg).dataset.name


def plan(cfg: RunConfig, catalog: Catalog, *, force: bool = False, select=None) -> Plan:
    variants, folds = head_selection(cfg, catalog, select)
    heads = HeadInputs(cfg, catalog)  # the manifest and the feature store, checked current
    units, skipped = [], []
    for v, k in itertools.product(variants, folds):
        unit = TrainUnit(cfg.dataset.name, v.value, int(k), heads.key(v, k), fresh=force)
        if force or trusted(catalog.head_checkpoint(cfg, v, k), unit.key) is None:
            units.append(unit)
        else:
            skipped.append(unit.name)
    return Plan(units, skipped, {"variants": [v.value for v in variants], "folds": folds})


def prepare(cfg: RunConfig, catalog: Catalog, plan: Plan) -> None:
    """Nothing to create: each head's folder is made by its unit."""


def _epoch_done(unit: TrainUnit, epoch: int) -> None:
    """Called after each epoch's checkpoint is on disk (a seam for kill-and-resume tests)."""


def _latest_checkpoint(folder: Path, key: str) -> dict | None:
    """The newest epoch checkpoint made with exactly this key (others are never resumed)."""
    for path in sorted(folder.glob("epoch*.pt"), reverse=True):
        blob = read_checkpoint(path)
        if blob.get("key") == key:
            return blob
    return None


def _samples(cfg: RunConfig, unit: TrainUnit, variant: Variant, table, y: np.ndarray,
             valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict, list[str]]:
    """The head's training samples: (rows (n,), their store frames (n, 1) or triplets (n, 3),
    triplet counts, validation subjects held out). Rows of the training folds with features and
    at least one label, less the validation subjects when thresholds are chosen there."""
    df = table.select(["row", "video_id", "frame", "subject", "fold"]).to_pandas()
    train = training_rows(df["fold"].to_numpy(), unit.fold) & valid & ~np.isnan(y).all(axis=1)
    held = []
    if cfg.eval.threshold_choice is ThresholdChoice.VALIDATION:  # thresholds are chosen there
        val, held = validation_rows(df["subject"].to_numpy(), df["fold"].to_numpy(), unit.fold,
                                    cfg.eval.validation_fraction, cfg.eval.validation_seed)
        train &= ~val
    rows = np.flatnonzero(train)
    if len(rows) < 2:
        raise InputError(f"dataset '{unit.dataset}' fold {unit.fold}: {len(rows)} training frames "
                         "with features and labels; nothing to train on")
    if not variant.temporal:
        return rows, rows[:, None], {}, held
    trip, counts = triplet_rows(df, valid, cfg.train.temporal_offset)
    return rows, trip[rows], counts, held


def _model(cfg: RunConfig, variant: Variant, fold: int, n_aus: int):
    """(the head, seeded, its body from `train.init_from`'s head if given; the parameters that
    did not come from there)."""
    torch.manual_seed(cfg.train.seed)
    model = build_head(variant, n_aus)
    src = init_head(cfg, variant, fold)
    return model, ([] if src is None else load_body(model, read_checkpoint(src)["state_dict"]))


def run_unit(cfg: RunConfig, catalog: Catalog, unit: TrainUnit, progress=None) -> dict:
    variant, t = Variant(unit.variant), cfg.train
    heads = HeadInputs(cfg, catalog)
    inputs = heads.inputs(variant, unit.fold)
    identity = head_identity(cfg, variant)
    if heads.key(variant, unit.fold) != unit.key:  # a worker checks what it reads (planned earlier)
        raise StaleArtifact(f"{unit.name}: its inputs changed since planning; run again")
    table = manifests.load(catalog, unit.dataset)
    au_set = au_set_of(table)
    y = label_matrix(table, au_set)  # (N, L), NaN unknown
    store = heads.features
    rows, frames, counts, held = _samples(cfg, unit, variant, table, y, store.valid)
    encoder = None
    if variant.uses_prior:
        encoder = FrozenEncoder(load_prior(location.readable(checked_prior(cfg, catalog, unit.fold, heads.manifest)))[0])
    folder = catalog.head_dir(cfg, variant, unit.fold)
    resume = None if unit.fresh else _latest_checkpoint(folder, unit.key)
    model, fresh = _model(cfg, variant, unit.fold, len(au_set.columns))
    meta = {"variant": variant.value, "au_set": au_set.value, "au_columns": au_set.columns,
            "n_aus": len(au_set.columns), "identity": identity, "inputs": inputs, "key": unit.key,
            "head_label": head_label(cfg, variant), "fold": unit.fold,
            "temporal_offset": t.temporal_offset, "feature_shape": list(store.shape),
            "random_weights": store.random_weights}
    if unit.fresh:  # forced: no epoch checkpoint of an earlier run may be resumed later either
        for old in folder.glob("epoch*.pt"):
            old.unlink(missing_ok=True)

    def checkpoint(epoch: int, state: dict) -> None:
        path = catalog.head_checkpoint(cfg, variant, unit.fold, epoch)
        save_checkpoint(path, meta | state | {"epoch": epoch})
        for old in folder.glob("epoch*.pt"):  # keep only the newest epoch (optimizer state is 2x the head)
            if old != path:
                old.unlink(missing_ok=True)
        _epoch_done(unit, epoch)

    # per AU from the frames that label it (mixed runs: the members that label the AU)
    weights = torch.from_numpy(class_weights(y[rows], normalise_to="n_aus"))
    groups = shares = None
    if mix.is_mix(cfg):
        member = table.column(mix.MEMBER).to_numpy(zero_copy_only=False)
        groups, shares = mix.sampling(cfg, member[rows])
    state = fit(model, store, frames, y[rows], weights, t, encoder, checkpoint, resume=resume,
                seed_key=(t.seed, unit.fold), progress=progress is not None,
                desc=f"{unit.variant} fold {unit.fold}", groups=groups, group_shares=shares)
    final = catalog.head_checkpoint(cfg, variant, unit.fold)
    save_checkpoint(final, meta | state | {"epoch": t.epochs})
    write_provenance(final, record(
        stage=STAGE, name=catalog.rel(final), identity=identity, inputs=inputs,
        code=code_key(HEAD_CODE),
        extra={"history": state["history"], "random_weights": store.random_weights,
               "n_train_frames": int(len(rows)), "triplets": counts, "validation_subjects": held}))
    return {"variant": unit.variant, "fold": unit.fold, "path": str(final), "skipped": False,
            "resumed_from_epoch": resume["epoch"] if resume else 0, "history": state["history"],
            "n_train_frames": int(len(rows)), "triplets": counts, "fresh_params": fresh,
            "random_weights": store.random_weights}


def finish(cfg: RunConfig, catalog: Catalog, plan: Plan, results: list[UnitResult]) -> dict:
    done = {(r.data["variant"], r.data["fold"]): r.data for r in results if r.ok}
    failed = {r.unit for r in results if not r.ok}
    out = []
    for v, k in itertools.product(plan.context["variants"], plan.context["folds"]):
        if (v, k) in done:
            out.append(done[(v, k)])
            continue
        final = catalog.head_checkpoint(cfg, Variant(v), k)
        rec = read_provenance(final) or {}
        name = f"{v}-{fold_name(k)}"
        out.append({"variant": v, "fold": k, "path": str(final), "skipped": name not in failed,
                    "failed": name in failed, "history": rec.get("history", []),
                    "random_weights": rec.get("random_weights")})
    return {"dataset": cfg.dataset.name, "heads": out}


def format_summary(summary: dict) -> str:
    lines = [f"heads, dataset {summary['dataset']}"]
    for h in summary["heads"]:
        losses = " ".join(f"{e['loss']:.4f}" for e in h.get("history", []))
        state = "FAILED" if h.get("failed") else "up to date" if h["skipped"] else (
            f"trained (resumed after epoch {h['resumed_from_epoch']})" if h.get("resumed_from_epoch")
            else "trained")
        rw = "  [RANDOM-WEIGHT FEATURES]" if h.get("random_weights") else ""
        lines.append(f"  {h['variant']} fold {h['fold']}: {state}; loss per epoch: {losses}{rw}\n"
                     f"    {h['path']}")
    return "\n".join(lines)
