"""Runs that train on several datasets at once (`dataset.layout: mix`).

A mixed run has no files of its own before training: its manifest is the concatenation of its
members' manifests (each checked current), with subjects and videos prefixed by the member's
name, the union AU set's columns (an AU a member does not label is null, i.e. unknown, on its
rows), the member's folds (fold k of the mix = fold k of every member), and `member`,
`member_row` pointing into the member's own stores. Crops and features are never copied:
`MixedFeatureStore` reads each member's feature store in place.
"""
from __future__ import annotations


import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.config import Layout, RunConfig
from pipeline.errors import ConfigError
from pipeline.manifest import ManifestReport, finalize
from store import manifests
from store.catalog import Catalog
from store.identity import members  # noqa: F401 (the validated member configs, used as mix.members)

MEMBER, MEMBER_ROW = "member", "member_row"


def is_mix(cfg: RunConfig) -> bool:
    return cfg.dataset.layout is Layout.MIX


def sampling(cfg: RunConfig, member_of_rows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(group (n,), share (G,)) for training on a mixed run's rows; (None, None) when the members
    are drawn in proportion to their frames (the default: every row once per epoch)."""
    if not cfg.dataset.member_weights:
        return None, None
    names = [m.dataset.name for m in members(cfg)]
    index = {n: i for i, n in enumerate(names)}
    groups = np.array([index[m] for m in member_of_rows], np.int64)
    return groups, np.array([cfg.dataset.member_weights[n] for n in names], np.float64)


def build_manifest(cfg: RunConfig) -> pa.Table:
    """The mixed manifest (module docstring)."""
    union = cfg.dataset.au_set.columns
    parts = []
    for m in members(cfg):
        df = manifests.load(Catalog(m.store), m.dataset.name).to_pandas()
        name = m.dataset.name
        df[MEMBER_ROW] = df["row"]
        df[MEMBER] = name
        df["subject"] = name + "/" + df["subject"].astype(str)
        df["video_id"] = name + "/" + df["video_id"].astype(str)
        for c in union:
            if c not in df:
                df[c] = pd.NA  # not labelled by this member: unknown, never absent
        parts.append(df[[c for c in df.columns if not c.endswith("_intensity")]])
    table = finalize(pd.concat(parts, ignore_index=True), cfg.dataset.name, cfg.dataset.au_set,
                     ManifestReport(), mixed=True)
    return table


class MixedFeatureStore:
    """The members' feature stores read as one, indexed by the mixed manifest's rows."""

    def __init__(self, stores: list, member_index: np.ndarray, member_rows: np.ndarray):
        self.stores = stores  # one FeatureStore per member, in `members` order
        self.member = np.asarray(member_index, np.int64)  # (N,) which store
        self.rows = np.asarray(member_rows, np.int64)  # (N,) its row there
        shapes = {s.shape for s in stores}
        if len(shapes) != 1:
            raise ConfigError(f"members' features differ in shape ({shapes})")
        self.shape = stores[0].shape
        self.dtype = stores[0].dtype
        self.path = tuple(s.path for s in stores)
        # shard ids into the members' shard lists laid end to end (training's chunk locality)
        self._offset = np.cumsum([0] + [-(-s.n_frames // s.frames_per_shard) for s in stores])
        self.frames_per_shard = stores[0].frames_per_shard

    @property
    def n_frames(self) -> int:
        return len(self.rows)

    @property
    def valid(self) -> np.ndarray:
        out = np.zeros(self.n_frames, bool)
        for i, s in enumerate(self.stores):
            sel = self.member == i
            out[sel] = s.valid[self.rows[sel]]
        return out

    @property
    def random_weights(self) -> bool:
        return any(s.random_weights for s in self.stores)

    @property
    def provenance(self) -> dict:
        from store.provenance import fingerprint

        return {"key": fingerprint([s.provenance.get("key") for s in self.stores])}

    def shard_ids(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        m = self.member[rows]
        fps = np.array([s.frames_per_shard for s in self.stores])[m]
        return self._offset[m] + self.rows[rows] // fps

    def read(self, rows: np.ndarray, dtype=np.float32, channels_last: bool = False) -> np.ndarray:
        rows = np.asarray(rows, np.int64).reshape(-1)
        out = None
        for i, s in enumerate(self.stores):
            pos = np.flatnonzero(self.member[rows] == i)
            if not pos.size:
                continue
            got = s.read(self.rows[rows[pos]], dtype, channels_last)
            if out is None:  # the same layout as the members' reader returns
                c, h, w = self.shape
                if channels_last:
                    out = np.empty((len(rows), h, w, c), got.dtype).transpose(0, 3, 1, 2)
                else:
                    out = np.empty((len(rows), c, h, w), got.dtype)
            out[pos] = got
        if out is None:
            c, h, w = self.shape
            return np.empty((0, c, h, w), self.dtype if dtype is None else dtype)
        return out
