"""Label priors and heads in the store: their content keys, checks, checkpoint files.

A prior of fold k is computed from the training labels of fold k (the manifest's `train[k]`
content key). A head of (variant, fold k) is computed from:

    train_labels   the manifest's train[k] key (labels outside test fold k, and the frame list)
    features       the keys of the feature shards that hold fold k's training rows
    prior          the prior's key (AU-VAE, AUNet)
    init           the initialising head's key (train.init_from)

so a head is retrained exactly when something it was trained on changed. Checkpoints are loaded
with `weights_only=True` (no arbitrary objects are unpickled) and verified against the SHA-256
their provenance recorded before they are trusted.
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.config import RunConfig, Variant
from pipeline.errors import ConfigError, MissingArtifact, StaleArtifact, StoreWriteError, storage_message
from pipeline.folds import ALL_SUBJECTS, fold_name, training_rows
from pipeline.models.heads import build_head
from store import features as feature_store
from store import location, manifests
from store.catalog import Catalog
from store.codekey import code_key
from store.identity import head_identity, init_source, prior_identity
from store.provenance import artifact_key, atomic_path, fingerprint, read_provenance, trusted

PRIOR_CODE = "stages.prior"
HEAD_CODE = "stages.train"
STATE_KEYS = ("state_dict", "optimizer", "scheduler", "rng")
# What torch.load raises for a file that is not (or no longer) a whole checkpoint: a truncated
# zip (RuntimeError), an empty file (EOFError), foreign or damaged bytes (UnpicklingError, or
# the legacy reader's KeyError / ValueError / UnicodeDecodeError).
CORRUPT_CHECKPOINT = (RuntimeError, EOFError, pickle.UnpicklingError, KeyError, ValueError,
                      UnicodeDecodeError, zipfile.BadZipFile)


# -- priors -------------------------------------------------------------------------------------
def prior_inputs(manifest_rec: dict, fold: int) -> dict:
    return {"train_labels": manifest_rec["keys"]["train"][str(fold)]}


def prior_key(cfg: RunConfig, manifest_rec: dict, fold: int) -> str:
    return artifact_key(prior_identity(cfg), prior_inputs(manifest_rec, fold), code_key(PRIOR_CODE))


def checked_prior(cfg: RunConfig, catalog: Catalog, fold: int, manifest_rec: dict) -> Path:
    path = catalog.prior(cfg, fold)
    if not path.exists():
        hint = " --fold all" if fold == ALL_SUBJECTS else ""
        raise MissingArtifact(f"no label prior for {fold_name(fold)} at {path}; run `aunet "
                              f"prior{hint}` first")
    if trusted(path, prior_key(cfg, manifest_rec, fold)) is None:
        raise StaleArtifact(f"label prior {path} was trained on other labels, settings or code "
                            "than this config's (or was changed since); run `aunet prior` first")
    return path


# -- heads --------------------------------------------------------------------------------------
def head_selection(cfg: RunConfig, catalog: Catalog, select: dict | None) -> tuple[list[Variant], list[int]]:
    """The (variants, folds) of the heads a command works on: its choice (`select`), else the
    config's, else every test fold; a fold the dataset does not have is refused."""
    select = select or {}
    variants = [Variant(v) for v in (select.get("variants") or cfg.train.variants)]
    have = manifests.test_folds(catalog, cfg.dataset.name)
    folds = [int(k) for k in (select.get("folds") or cfg.train.folds or have)]
    bad = [k for k in folds if k not in have and k != ALL_SUBJECTS]
    if bad:
        raise ConfigError(f"fold {', '.join(map(str, bad))} is not a test fold of dataset "
                          f"'{cfg.dataset.name}' (its folds: {', '.join(map(str, have))}; `all` "
                          "trains on every subject)")
    return variants, folds


def training_shards(store, folds: np.ndarray, fold: int) -> list[int]:
    """Shards holding at least one training row of `fold` (indices into the store's keys)."""
    return sorted(set(store.shard_ids(np.flatnonzero(training_rows(folds, fold))).tolist()))


def init_head(cfg: RunConfig, variant: Variant, fold: int) -> Path | None:
    """The final head that initialises this one (train.init_from), checked trusted."""
    src = init_source(cfg)
    if src is None:
        return None
    path = Catalog(src.store).head_checkpoint(src, variant, fold)
    rec = read_provenance(path)
    if rec is None or trusted(path, rec.get("key", "")) is None:
        raise MissingArtifact(f"train.init_from={cfg.train.init_from}: no final {Variant(variant).value} "
                              f"head of fold {fold} at {path}; train that config first "
                              f"(`aunet train --config {cfg.train.init_from}`)")
    return path


def head_inputs(cfg: RunConfig, catalog: Catalog, variant: Variant, fold: int,
                manifest_rec: dict, shard_keys: list[str], folds: np.ndarray, store) -> dict:
    variant = Variant(variant)
    used = training_shards(store, folds, fold)
    out = {"train_labels": manifest_rec["keys"]["train"][str(fold)],
           "features": fingerprint([shard_keys[s] for s in used])}
    if variant.uses_prior:
        out["prior"] = read_provenance(checked_prior(cfg, catalog, fold, manifest_rec))["key"]
    src = init_head(cfg, variant, fold)
    if src is not None:
        out["init"] = read_provenance(src)["key"]
    return out


class HeadInputs:
    """What every head of one config reads, checked once: manifest, features, folds."""

    def __init__(self, cfg: RunConfig, catalog: Catalog):
        self.cfg, self.catalog = cfg, catalog
        self.manifest = manifests.checked(cfg, catalog)
        self.features = feature_store.checked(cfg, catalog)
        self.shard_keys = feature_store.expected_keys(cfg, catalog)
        self.folds = manifests.load(catalog, cfg.dataset.name, ["fold"]).column("fold").to_numpy()

        self._inputs: dict[tuple[str, int], dict] = {}

    def inputs(self, variant: Variant, fold: int) -> dict:
        """The head's inputs' keys (labels, feature shards, prior, init), read once per head."""
        at = (Variant(variant).value, int(fold))
        if at not in self._inputs:
            self._inputs[at] = head_inputs(self.cfg, self.catalog, variant, fold, self.manifest,
                                           self.shard_keys, self.folds, self.features)
        return self._inputs[at]

    def key(self, variant: Variant, fold: int) -> str:
        """The one place a head's key is built: its identity, its inputs, its code."""
        return artifact_key(head_identity(self.cfg, variant), self.inputs(variant, fold),
                            code_key(HEAD_CODE))


def checked_head(cfg: RunConfig, catalog: Catalog, variant: Variant, fold: int,
                 heads: HeadInputs | None = None) -> Path:
    """The final head this config asks for, current; MissingArtifact / StaleArtifact otherwise."""
    path = catalog.head_checkpoint(cfg, variant, fold)
    v = Variant(variant).value
    if not path.exists():
        raise MissingArtifact(f"no trained {v} head for fold {fold} of this config at {path}; "
                              f"run `aunet train` first")
    heads = heads or HeadInputs(cfg, catalog)
    if trusted(path, heads.key(variant, fold)) is None:
        raise StaleArtifact(f"{v} head of fold {fold} at {path} was trained on other data, "
                            "settings or code than this config's (or was changed since); run "
                            "`aunet train` first")
    return path


# -- checkpoint files ---------------------------------------------------------------------------
def save_checkpoint(path: Path, blob: dict) -> None:
    """Atomic: a killed run leaves the previous file or this one, never half of one.

    The checkpoint is serialised in memory first and written with plain writes, so a full disk
    is an OSError of that write (torch.save onto a file says only "file write failed" as a
    RuntimeError), reported in one line naming `path`; the temporary file is removed."""
    path = location.as_path(path)
    buf = io.BytesIO()
    torch.save(blob, buf)
    try:
        with atomic_path(path, ".pt") as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
            try:
                view = memoryview(buf.getbuffer())
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
    except OSError as e:
        if storage_message(e) is None:
            raise
        raise StoreWriteError(f"cannot save {path}: {e.strerror or e}; free space or fix "
                              "permissions and run the command again (nothing was half-written: "
                              "the previous file, if any, is kept)") from None


def read_checkpoint(path: Path) -> dict:
    """A head or prior checkpoint; weights_only=True: tensors and plain data, nothing else."""
    path = location.as_path(path)
    try:
        return torch.load(location.readable(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MissingArtifact(f"checkpoint {path} does not exist; rerun the stage that writes "
                              "it") from None
    except CORRUPT_CHECKPOINT as e:  # truncated, damaged or foreign file: name it
        raise StaleArtifact(f"cannot read checkpoint {path} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no data'}); rerun the stage "
                            "that wrote it with --force") from None
    # anything else propagates: an OSError (permissions, I/O) is said as such by the command
    # line, and any other exception is a bug


def load_head(path: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, the checkpoint's metadata without weights and optimizer state)."""
    blob = read_checkpoint(location.as_path(path))
    model = build_head(Variant(blob["variant"]), int(blob["n_aus"]))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, {k: v for k, v in blob.items() if k not in STATE_KEYS}
