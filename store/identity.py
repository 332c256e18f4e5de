"""Artifact identity: what a config asks for, as data and as short ids.

An artifact's *identity* is everything of the config (and of the upstream identities) that
decides what it is: the faces parameters and the detector files' contents for a crop store; the
backbone, the FAN weights' content, the crop store's identity and the storage settings for a
feature store; and so on down to each head. Paths come from identities (`store.catalog`), so
two configurations never share a file, and a later stage finds exactly the artifact its config
asks for, never "the newest". Identities hold no absolute path: moving a store, or mounting it
elsewhere on a Dask worker, keeps every id.

Content keys (what an artifact was actually computed from) are separate: see the stages and
`store.provenance`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.aus import union_of
from pipeline.config import (FacesConfig, Layout, RunConfig, ThresholdChoice, Variant, load_config,
                             member_configs)
from pipeline.errors import ConfigError
from pipeline.faces.types import DetectorError
from pipeline.faces.weights import identity_files
from pipeline.hashing import hash_files
from pipeline.models.fan import weights_identity
from store.provenance import fingerprint

ID_CHARS = 10  # characters of an id used in folder names
PATH_KEYS = ("detector_weights", "detector_anchors", "weights", "init_from")


def _without_paths(section: dict) -> dict:
    return {k: v for k, v in section.items() if k not in PATH_KEYS}


def detector_files(faces: FacesConfig) -> dict[str, str]:
    """role -> SHA-256 of each local detector file, or the address of one face-alignment
    downloads ({} for provided landmarks). Never downloads: an identity needs no network.
    Hashes are remembered per file version (`pipeline.hashing`), so a replaced file is seen."""
    if faces.detector.value == "provided":
        return {}
    files = identity_files(faces)
    local = [p for p in files.values() if isinstance(p, Path)]
    digests = hash_files(local, missing_ok=True) if local else {}
    for role, p in files.items():
        if isinstance(p, Path) and digests[str(p)] is None:
            raise DetectorError(f"faces.detector_{role}: file not found: {p}")
    return {role: digests[str(p)] if isinstance(p, Path) else f"url:{p}" for role, p in files.items()}


def faces_identity(cfg: RunConfig) -> dict:
    return {"params": _without_paths(cfg.section("faces")), "detector": detector_files(cfg.faces)}


def faces_id(cfg: RunConfig) -> str:
    return fingerprint(faces_identity(cfg))


def features_identity(cfg: RunConfig) -> dict:
    f = cfg.features
    # batch_size and device change speed, not the stored values: not part of the identity
    return {"backbone": f.backbone.value, "weights": weights_identity(f), "dtype": f.dtype.value,
            "frames_per_shard": f.frames_per_shard, "codec": f.codec, "crops": faces_id(cfg),
            "crop_size": cfg.faces.size}


def features_id(cfg: RunConfig) -> str:
    return fingerprint(features_identity(cfg))


def prior_identity(cfg: RunConfig) -> dict:
    return cfg.section("prior") | {"k": cfg.prior.k(cfg.dataset.au_set),
                                   "au_set": cfg.dataset.au_set.value}


def prior_id(cfg: RunConfig) -> str:
    return fingerprint(prior_identity(cfg))


def init_source(cfg: RunConfig) -> RunConfig | None:
    """The config whose heads initialise these (train.init_from names its YAML file)."""
    return load_config(cfg.train.init_from) if cfg.train.init_from else None


def members(cfg: RunConfig) -> list[RunConfig]:
    """The member configs, checked to fit the mix: single datasets, the same faces and features
    settings as the mix (their stores are read as they are), the mix's AU set their union."""
    out = member_configs(cfg)
    names = [m.dataset.name for m in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"dataset.members: two members are named alike ({names})")
    for m in out:
        if m.dataset.layout is Layout.MIX:
            raise ConfigError(f"dataset.members: {m.dataset.name} is itself a mix; list its members")
        for section, ident in (("faces", faces_identity), ("features", features_identity)):
            if ident(m) != ident(cfg):
                raise ConfigError(f"member {m.dataset.name}: its {section} settings differ from the "
                                  f"mix's; a mixed run reads the members' stores as they are, so "
                                  f"give the mix the same {section} section")
    try:
        union = union_of([m.dataset.au_set for m in out])
    except ValueError as e:
        raise ConfigError(f"dataset.members: {e}") from None
    if cfg.dataset.au_set is not union:
        raise ConfigError(f"dataset.au_set: the members' AUs make '{union.value}'; set it so")
    weights = cfg.dataset.member_weights
    if weights and set(weights) != set(names):
        raise ConfigError(f"dataset.member_weights must give every member a weight ({names}); it "
                          f"names {sorted(weights)}")
    return out


def head_identity(cfg: RunConfig, variant: Variant) -> dict:
    """Every setting a head depends on: train parameters, AU set, features, prior, init source,
    and the validation subjects held out of its training data (eval.threshold_choice)."""
    variant = Variant(variant)
    train = {k: v for k, v in _without_paths(cfg.section("train")).items()
             if k not in ("variants", "folds")}
    out = {"train": train, "variant": variant.value, "au_set": cfg.dataset.au_set.value,
           "features": features_id(cfg)}
    if variant.uses_prior:
        out["prior"] = prior_id(cfg)
    if cfg.dataset.layout.value == "mix":  # which datasets it is trained on, in which shares
        out["mix"] = {"members": [m.dataset.name for m in members(cfg)],
                      "weights": dict(sorted(cfg.dataset.member_weights.items()))}
    if cfg.eval.threshold_choice is ThresholdChoice.VALIDATION:  # trained without these subjects
        out["validation"] = {"fraction": cfg.eval.validation_fraction, "seed": cfg.eval.validation_seed}
    src = init_source(cfg)
    if src is not None:
        out["init"] = {"dataset": src.dataset.name, "head": head_id(src, variant)}
    return out


def head_id(cfg: RunConfig, variant: Variant) -> str:
    return fingerprint(head_identity(cfg, variant))


def head_label(cfg: RunConfig, variant: Variant) -> str:
    """Readable folder name: the main settings spelled out, then the id of all of them."""
    t = cfg.train
    name = f"lr{t.lr:g}_e{t.epochs}_b{t.batch_size}"
    if Variant(variant).uses_prior:
        name += f"_cons-{t.consistency.value}-g{t.consistency_weight:g}"
    if Variant(variant).temporal:
        name += f"_T{t.temporal_offset}"
    if t.init_from:
        name += f"_from-{init_source(cfg).dataset.name}"
    if cfg.eval.threshold_choice is ThresholdChoice.VALIDATION:
        name += f"_val{cfg.eval.validation_fraction:g}"
    return f"{name}-{head_id(cfg, variant)[:ID_CHARS]}"


def eval_identity(cfg: RunConfig) -> dict:
    """What an evaluation run of this config is of: which heads, on which datasets, scored how.
    Runs in the `runs` table carry its fingerprint (`config_key`), so the report renders the
    run this config asked for, never just the newest one."""
    t = cfg.train
    variants = [Variant(v) for v in t.variants]
    out = {"dataset": cfg.dataset.name, "eval_datasets": sorted({cfg.dataset.name, *cfg.eval.cross_datasets}),
            "heads": {v.value: head_id(cfg, v) for v in variants},
            "folds": list(t.folds) if t.folds else "all",
            "eval": {k: v for k, v in cfg.section("eval").items() if k != "timeline_video"}}
    if cfg.dataset.subjects is not None:  # the groups' metadata, by content
        out["subjects"] = hash_files([cfg.dataset.subjects], missing_ok=True)[str(cfg.dataset.subjects)]
    return out


def eval_id(cfg: RunConfig) -> str:
    return fingerprint(eval_identity(cfg))


# -- content keys of tables ---------------------------------------------------------------------
def frame_key(df: pd.DataFrame, columns: list[str]) -> str:
    """Content hash of some columns of a table (values and order), independent of its index."""
    if df.empty:
        return fingerprint({"columns": columns, "rows": 0})
    hashed = pd.util.hash_pandas_object(df[columns], index=False).to_numpy(np.uint64)
    return fingerprint({"columns": columns, "rows": len(df), "hash": hashed.tobytes().hex()})


def weights_path_name(cfg: RunConfig) -> str:
    """Short readable weights tag for folder names: random-seed0, or the file hash's start."""
    wid = weights_identity(cfg.features)
    return wid if wid.startswith(("random", "download")) else wid[:12]


def relative(path: Path, root: Path) -> str:
    """`path` relative to `root` when inside it, else as given (data outside the store)."""
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)
