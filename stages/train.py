"""Stage 4: train the AU heads on cached features (unit = (variant, fold)).

Training frames of fold k: rows whose fold is not k (fold-0 rows included), with features
(valid) and at least one known label. Loss: frequency-weighted masked BCE, plus gamma * L_cons
through the fold's frozen prior encoder for AU-VAE and AUNet. AdamW on the head, StepLR, seeded.
A checkpoint is written after every epoch (only the newest is kept); a killed run resumes from
it; `final.pt` marks the end and makes later runs skip the unit while it is current. No model
selection is done: the fixed schedule's last epoch is the model, so the test fold is never read.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.batches import (BackgroundLoader, batch_buffer, chunk_local_batches, gather_shifted,
                              read_unique)
from pipeline.config import RunConfig, TrainConfig, Variant
from pipeline.labels import class_weights
from pipeline.losses import consistency_loss, weighted_bce
from pipeline.manifest import au_set_of, label_matrix
from pipeline.models.heads import build_head, load_body
from pipeline.models.vae import FrozenEncoder, load_prior
from pipeline.temporal import triplet_rows
from stages import prior as prior_stage
from stages.heads_io import read_checkpoint, save_checkpoint
from stages.manifest import load as load_manifest, manifest_key
from store.catalog import Catalog
from store.features import FeatureStore
from store.provenance import code_version, fingerprint, is_current, read_provenance, write_provenance

STAGE = "train"
CODE_MODULES = ("stages.train", "stages.heads_io", "pipeline.models.heads", "pipeline.losses",
                "pipeline.batches", "pipeline.temporal", "pipeline.models.vae")
LOADER_DEPTH = 3  # batches read ahead by the background thread


@dataclass(frozen=True)
class TrainUnit:
    dataset: str
    variant: str
    fold: int
    head_name: str
    fresh: bool = False  # forced: train from scratch, ignoring epoch checkpoints


def head_name(cfg: RunConfig, variant: Variant) -> str:
    """The head's settings spelled out, e.g. lr1e-04_e12_b64_cons-paper_g1_shift2_s0."""
    t = cfg.train
    name = (f"lr{t.lr:.0e}_e{t.epochs}_b{t.batch_size}_cons-{t.consistency.value}"
            f"_g{t.consistency_weight:g}_shift{t.feature_shift}_s{t.seed}")
    if Variant(variant).temporal and t.temporal_offset != 10:
        name += f"_T{t.temporal_offset}"
    if t.max_steps_per_epoch:
        name += f"_steps{t.max_steps_per_epoch}"
    if t.init_from:
        name += f"_from-{t.init_from}"
    return name


def train_params(cfg: RunConfig, variant: Variant) -> dict:
    """What the head depends on: the train section without the unit selection, plus the variant."""
    params = {k: v for k, v in cfg.section("train").items() if k not in ("variants", "folds")}
    return params | {"variant": Variant(variant).value, "au_set": cfg.dataset.au_set.value}


def find_feature_store(cfg: RunConfig, catalog: Catalog) -> Path:
    """The features.zarr of this dataset and backbone (the newest, if several were written)."""
    return catalog.latest_features(cfg.dataset.name, cfg.features.backbone.value)


def _init_source(cfg: RunConfig, catalog: Catalog, variant: Variant, fold: int) -> Path | None:
    if not cfg.train.init_from:
        return None
    base = catalog.dataset_dir(cfg.train.init_from) / "models" / variant.value
    found = sorted(base.glob(f"fold{fold}/*/final.pt")) or sorted(base.glob("fold*/*/final.pt"))
    if not found:
        raise FileNotFoundError(f"train.init_from={cfg.train.init_from!r}: no final {variant.value} "
                                f"heads under {base}; train that dataset first")
    return max(found, key=lambda p: p.stat().st_mtime)


def _inputs(cfg: RunConfig, catalog: Catalog, variant: Variant, fold: int) -> dict[str, str]:
    store = FeatureStore(find_feature_store(cfg, catalog))
    prov = store.provenance
    out = {"features": str(prov.get("key") or fingerprint(prov)), "features_path": str(store.path),
           "manifest": manifest_key(catalog, cfg.dataset.name)}
    if variant.uses_prior:
        path = prior_stage.prior_path(cfg, catalog, fold)
        rec = read_provenance(path)
        out |= {"prior": str(path), "prior_key": rec["key"] if rec else "missing"}
    src = _init_source(cfg, catalog, variant, fold)
    if src is not None:
        rec = read_provenance(src)
        out |= {"init_from": str(src), "init_key": rec["key"] if rec else "missing"}
    return out


def _code() -> str:
    return code_version(*CODE_MODULES)


def plan(cfg: RunConfig, catalog: Catalog, *, force: bool = False,
         variants=None, folds=None) -> list[TrainUnit]:
    name = cfg.dataset.name
    variants = [Variant(v) for v in (variants or cfg.train.variants)]
    folds = list(folds or cfg.train.folds or prior_stage.test_folds(catalog, name))
    units = []
    for v, k in itertools.product(variants, folds):
        hn = head_name(cfg, v)
        final = catalog.head_checkpoint(name, v.value, k, hn)
        current = is_current(final, config=train_params(cfg, v), code=_code(),
                             inputs=_inputs(cfg, catalog, v, k))
        if force or not current:
            units.append(TrainUnit(name, v.value, int(k), hn, fresh=force))
    return units


def _check_complete(store: FeatureStore) -> None:
    """Refuse a store the features stage has not finished: its unwritten frames read as zeros."""
    import zarr

    done = np.asarray(zarr.open_group(str(store.path), mode="r")["shard_done"][:], dtype=bool)
    if not done.all():
        todo = np.flatnonzero(~done)
        raise ValueError(f"feature store {store.path} is incomplete: shards {todo[:10].tolist()} "
                         f"({len(todo)} of {len(done)}) not done; finish `aunet features` first")


def _epoch_done(unit: TrainUnit, epoch: int) -> None:
    """Called after each epoch's checkpoint is on disk (a seam for kill-and-resume tests)."""


def _latest_checkpoint(folder: Path, key: str) -> dict | None:
    for path in sorted(folder.glob("epoch*.pt"), reverse=True):
        blob = read_checkpoint(path)
        if blob.get("key") == key:
            return blob
    return None


def run_unit(cfg: RunConfig, catalog: Catalog, unit: TrainUnit, progress: bool = True,
             force: bool = False) -> dict:
    variant, t = Variant(unit.variant), cfg.train
    table = load_manifest(catalog, unit.dataset)
    au_set = au_set_of(table)
    df = table.select(["row", "video_id", "frame", "subject", "fold"]).to_pandas()
    y = label_matrix(table, au_set)  # (N, L), NaN unknown
    store = FeatureStore(find_feature_store(cfg, catalog))
    if store.n_frames != len(df):
        raise ValueError(f"feature store {store.path} has {store.n_frames} frames but the manifest "
                         f"has {len(df)} rows; rerun `aunet features`")
    _check_complete(store)
    valid = store.valid
    train = (df["fold"].to_numpy() != unit.fold) & valid & ~np.isnan(y).all(axis=1)
    rows = np.flatnonzero(train)
    if len(rows) < 2:
        raise ValueError(f"dataset '{unit.dataset}' fold {unit.fold}: {len(rows)} training frames "
                         "with features and labels; nothing to train on")
    counts = {}
    if variant.temporal:
        trip, counts = triplet_rows(df, valid, t.temporal_offset)
        frames = trip[rows]  # (n, 3)
    else:
        frames = rows[:, None]  # (n, 1)
    encoder = None
    if variant.uses_prior:
        path = prior_stage.prior_path(cfg, catalog, unit.fold)
        if not path.exists():
            raise FileNotFoundError(f"{variant.value} needs the label prior of fold {unit.fold} at "
                                    f"{path}; run `aunet prior` first")
        encoder = FrozenEncoder(load_prior(path)[0])
    params, code = train_params(cfg, variant), _code()
    inputs = _inputs(cfg, catalog, variant, unit.fold)
    key = fingerprint({"config": params, "code": code, "inputs": inputs})
    folder = catalog.head_dir(unit.dataset, unit.variant, unit.fold, unit.head_name)
    resume = None if (force or unit.fresh) else _latest_checkpoint(folder, key)
    torch.manual_seed(t.seed)
    model = build_head(variant, len(au_set.columns))
    fresh: list[str] = []
    if "init_from" in inputs:
        fresh = load_body(model, read_checkpoint(Path(inputs["init_from"]))["state_dict"])
    meta = {"variant": variant.value, "au_set": au_set.value, "au_columns": au_set.columns,
            "n_aus": len(au_set.columns), "train_config": params, "inputs": inputs, "key": key,
            "head_name": unit.head_name, "fold": unit.fold, "feature_shape": list(store.shape),
            "random_weights": store.random_weights}

    def checkpoint(epoch: int, state: dict) -> None:
        path = catalog.head_checkpoint(unit.dataset, unit.variant, unit.fold, unit.head_name, epoch)
        save_checkpoint(path, meta | state | {"epoch": epoch})
        for old in folder.glob("epoch*.pt"):  # keep only the newest epoch (optimizer state is 2x the head)
            if old != path:
                old.unlink(missing_ok=True)
        _epoch_done(unit, epoch)

    weights = torch.from_numpy(class_weights(y[rows], normalise_to="n_aus"))
    state = fit(model, store, frames, y[rows], weights, t, encoder, checkpoint, resume=resume,
                seed_key=(t.seed, unit.fold), progress=progress,
                desc=f"{unit.variant} fold {unit.fold}")
    final = catalog.head_checkpoint(unit.dataset, unit.variant, unit.fold, unit.head_name)
    save_checkpoint(final, meta | state | {"epoch": t.epochs})
    write_provenance(final, stage=STAGE, config=params, code=code, inputs=inputs,
                     extra={"history": state["history"], "random_weights": store.random_weights,
                            "n_train_frames": int(len(rows)), "triplets": counts})
    return {"variant": unit.variant, "fold": unit.fold, "path": str(final), "skipped": False,
            "resumed_from_epoch": resume["epoch"] if resume else 0, "history": state["history"],
            "n_train_frames": int(len(rows)), "triplets": counts, "fresh_params": fresh,
            "random_weights": store.random_weights}


def fit(model, store, frames: np.ndarray, y: np.ndarray, weights: torch.Tensor, t: TrainConfig,
        encoder, checkpoint, *, resume: dict | None = None, seed_key=(0, 0), progress: bool = True,
        desc: str = "train") -> dict:
    """Train `model` on samples frames (n, S) (S = 1 or 3 store rows) with labels y (n, L).

    Epoch e draws its batch order and shifts from a generator seeded by (seed_key, e), so a run
    resumed after epoch e continues exactly as the uninterrupted run would have.
    """
    model.to(memory_format=torch.channels_last)  # the batches are channels last: 36% faster here
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=t.lr_step_epochs, gamma=t.lr_gamma)
    history: list[dict] = []
    start = 0
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["rng"]["torch"])
        history, start = list(resume["history"]), int(resume["epoch"])
    shards = frames[:, frames.shape[1] // 2] // store.frames_per_shard  # (n,) shard of the middle frame
    n_batches = -(-len(frames) // t.batch_size)
    steps = min(n_batches, t.max_steps_per_epoch or n_batches)
    labels = torch.from_numpy(y)
    bar = tqdm(total=(t.epochs - start) * steps, desc=desc, disable=not progress)

    def load(idx: np.ndarray):
        # The background thread decodes and transposes to channels last (read_unique: no
        # torch); the gather, shift and cast run in the training thread with torch's own
        # threads: torch ops in a second thread start a second OpenMP team that fights the
        # head's for the cores.
        return (*read_unique(store, frames[idx]), labels[idx])  # frames (U, C, H, W), index, y

    # one batch buffer, refilled every step (after the previous step's backward)
    buf = batch_buffer(frames.shape[1], min(t.batch_size, len(frames)), *store.shape)
    for epoch in range(start + 1, t.epochs + 1):
        rng = np.random.default_rng([*seed_key, epoch])
        shift_rng = np.random.default_rng([*seed_key, epoch, 1])
        batches = itertools.islice(chunk_local_batches(shards, t.batch_size, t.shuffle_buffer, rng), steps)
        model.train()
        sums = {"loss": 0.0, "cls": 0.0, "cons": 0.0}
        n_steps = cons_rows = 0
        with BackgroundLoader(batches, load, LOADER_DEPTH) as loader:
            for stored, index, yb in loader:
                x = gather_shifted(stored, index, t.feature_shift, shift_rng, buf)  # (S, B, C, H, W)
                if x.shape[0] == 3:
                    logits = model(x[1], x[0], x[2])  # (B, L)
                else:
                    logits = model(x[0])
                cls = weighted_bce(logits, yb, weights)
                loss = cls
                if encoder is not None:
                    cons, n = consistency_loss(logits, yb, encoder, t.consistency)
                    loss = cls + t.consistency_weight * cons
                    sums["cons"] += float(cons.detach())
                    cons_rows += n
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sums["loss"] += float(loss.detach())
                sums["cls"] += float(cls.detach())
                n_steps += 1
                bar.update(1)
                bar.set_postfix_str(f"epoch {epoch} loss {sums['loss'] / n_steps:.4f}")
        sched.step()
        entry = {"epoch": epoch, "steps": n_steps, "lr": opt.param_groups[0]["lr"],
                 **{k: v / max(n_steps, 1) for k, v in sums.items()}, "cons_rows": cons_rows}
        history.append(entry)
        if progress:
            bar.write(f"{desc} epoch {epoch}/{t.epochs}: loss {entry['loss']:.4f} "
                      f"(cls {entry['cls']:.4f}, cons {entry['cons']:.4f})")
        checkpoint(epoch, _state(model, opt, sched, history))
    bar.close()
    return _state(model, opt, sched, history)


def _state(model, opt, sched, history) -> dict:
    return {"state_dict": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "rng": {"torch": torch.get_rng_state()},
            "history": list(history)}


def finish(cfg: RunConfig, catalog: Catalog, results: list[dict], variants=None, folds=None) -> dict:
    done = {(r["variant"], r["fold"]): r for r in results}
    out = []
    variants = [Variant(v) for v in (variants or cfg.train.variants)]
    folds = list(folds or cfg.train.folds or prior_stage.test_folds(catalog, cfg.dataset.name))
    for v, k in itertools.product(variants, folds):
        if (v.value, k) in done:
            out.append(done[(v.value, k)])
            continue
        final = catalog.head_checkpoint(cfg.dataset.name, v.value, k, head_name(cfg, v))
        rec = read_provenance(final) or {}
        out.append({"variant": v.value, "fold": k, "path": str(final), "skipped": True,
                    "history": rec.get("history", []), "random_weights": rec.get("random_weights")})
    return {"dataset": cfg.dataset.name, "heads": out}


def run(cfg: RunConfig, catalog: Catalog, *, force: bool = False, progress: bool = True,
        client=None, variants=None, folds=None) -> dict:
    with catalog.lock(cfg.dataset.name, STAGE):
        units = plan(cfg, catalog, force=force, variants=variants, folds=folds)
        results = [run_unit(cfg, catalog, u, progress, force) for u in units]
        return finish(cfg, catalog, results, variants, folds)


def format_summary(summary: dict) -> str:
    lines = [f"heads, dataset {summary['dataset']}"]
    for h in summary["heads"]:
        losses = " ".join(f"{e['loss']:.4f}" for e in h.get("history", []))
        state = "up to date" if h["skipped"] else (
            f"trained (resumed after epoch {h['resumed_from_epoch']})" if h.get("resumed_from_epoch")
            else "trained")
        rw = "  [RANDOM-WEIGHT FEATURES]" if h.get("random_weights") else ""
        lines.append(f"  {h['variant']} fold {h['fold']}: {state}; loss per epoch: {losses}{rw}\n"
                     f"    {h['path']}")
    return "\n".join(lines)
