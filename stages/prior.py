"""Stage 3: the AU-VAE label prior, one per dataset and test fold (unit = fold).

Training labels are the rows whose fold is not the test fold (fold-0 rows included). Frames
with any unknown AU are left out (the VAE takes whole label vectors) and counted. Lambda is
chosen from `prior.lambdas` on held-out *training* subjects (pipeline.folds.holdout_subjects)
by the held-out negative ELBO (a lambda-free criterion), then the prior is refitted on all
training subjects with that lambda; the last epoch's weights are kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from pipeline.config import RunConfig
from pipeline.folds import holdout_subjects
from pipeline.manifest import au_set_of, label_matrix
from pipeline.models.vae import fit_vae, negative_elbo, prior_metrics
from stages.manifest import built_path as built_manifest_path, load as load_manifest, manifest_key
from store.catalog import Catalog
from store.provenance import atomic_path, code_version, is_current, read_provenance, write_provenance

STAGE = "prior"
CODE_MODULES = ("stages.prior", "pipeline.models.vae", "pipeline.losses", "pipeline.labels")


@dataclass(frozen=True)
class PriorUnit:
    dataset: str
    fold: int


def prior_params(cfg: RunConfig) -> dict:
    return cfg.section("prior") | {"k": cfg.prior.k(cfg.dataset.au_set),
                                   "au_set": cfg.dataset.au_set.value}


def prior_path(cfg: RunConfig, catalog: Catalog, fold: int):
    return catalog.prior(cfg.dataset.name, fold, prior_params(cfg))


def _inputs(catalog: Catalog, dataset: str) -> dict[str, str]:
    return {"manifest": manifest_key(catalog, dataset)}


def _code() -> str:
    return code_version(*CODE_MODULES)


def test_folds(catalog: Catalog, dataset: str) -> list[int]:
    folds = pq.read_table(built_manifest_path(catalog, dataset), columns=["fold"]).column("fold").to_numpy()
    return sorted(int(f) for f in np.unique(folds) if f > 0)


def plan(cfg: RunConfig, catalog: Catalog, *, force: bool = False) -> list[PriorUnit]:
    name = cfg.dataset.name
    units = []
    for fold in test_folds(catalog, name):
        current = is_current(prior_path(cfg, catalog, fold), config=prior_params(cfg),
                             code=_code(), inputs=_inputs(catalog, name))
        if force or not current:
            units.append(PriorUnit(name, fold))
    return units


def _fit(cfg: RunConfig, y: np.ndarray, lam: float, bar, what: str):
    p = cfg.prior

    def on_epoch(epoch: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix_str(f"{what} lambda={lam:g} epoch {epoch} loss/frame {loss:.3f}")

    return fit_vae(y, p.k(cfg.dataset.au_set), lam, epochs=p.epochs, lr=p.lr,
                   batch_size=p.batch_size, noise=p.noise, seed=p.seed, on_epoch=on_epoch)


def run_unit(cfg: RunConfig, catalog: Catalog, unit: PriorUnit, progress: bool = True) -> dict:
    table = load_manifest(catalog, unit.dataset)
    au_set = au_set_of(table)
    df = table.select(["subject", "fold"]).to_pandas()
    y = label_matrix(table, au_set)  # (N, L), NaN = unknown
    train = (df["fold"].to_numpy() != unit.fold)
    known = ~np.isnan(y).any(axis=1)
    n_unknown = int((train & ~known).sum())
    rows = train & known
    if not rows.any():
        raise ValueError(f"dataset '{unit.dataset}' fold {unit.fold}: no fully-labelled training "
                         f"frame to train the label prior on ({n_unknown} left out as unknown)")
    subjects = df["subject"].astype(str).to_numpy()
    lambdas = tuple(cfg.prior.lambdas)
    held = holdout_subjects(subjects[rows].tolist(), cfg.prior.holdout_fraction, cfg.prior.seed)
    is_held = np.isin(subjects, held) & rows
    select = len(lambdas) > 1 and is_held.any() and (rows & ~is_held).any()
    n_fits = (len(lambdas) if select else 0) + 1
    bar = tqdm(total=n_fits * cfg.prior.epochs, desc=f"prior {unit.dataset} fold {unit.fold}",
               disable=not progress)
    selection: dict[str, float] = {}
    if select:
        for lam in lambdas:
            vae, _ = _fit(cfg, y[rows & ~is_held], lam, bar, "select")
            selection[f"{lam:g}"] = negative_elbo(vae, y[is_held], seed=cfg.prior.seed)
        lam = float(min(lambdas, key=lambda v: selection[f"{v:g}"]))
    else:
        lam = float(lambdas[0])
    vae, history = _fit(cfg, y[rows], lam, bar, "refit")
    bar.close()
    metrics = {"dataset": unit.dataset, "fold": unit.fold, "lambda": lam,
               "latent_dim": vae.latent, "n_frames": int(rows.sum()),
               "n_unknown_left_out": n_unknown, "n_holdout_subjects": len(held) if select else 0,
               **prior_metrics(vae, y[rows], seed=cfg.prior.seed),
               "final_loss": float(history[-1])}
    out = prior_path(cfg, catalog, unit.fold)
    with atomic_path(out, ".pt") as tmp:
        torch.save({"state_dict": vae.state_dict(), "n_aus": vae.n_aus, "latent": vae.latent,
                    "lambda": lam, "au_set": au_set.value, "au_columns": au_set.columns,
                    "fold": unit.fold, "history": history, "selection": selection,
                    "metrics": metrics}, tmp)
    write_provenance(out, stage=STAGE, config=prior_params(cfg), code=_code(),
                     inputs=_inputs(catalog, unit.dataset),
                     extra={"metrics": metrics, "selection": selection})
    return {"fold": unit.fold, "path": str(out), "metrics": metrics, "selection": selection,
            "skipped": False}


def finish(cfg: RunConfig, catalog: Catalog, results: list[dict]) -> dict:
    done = {r["fold"]: r for r in results}
    folds = []
    for fold in test_folds(catalog, cfg.dataset.name):
        if fold in done:
            folds.append(done[fold])
            continue
        path = prior_path(cfg, catalog, fold)
        rec = read_provenance(path) or {}
        folds.append({"fold": fold, "path": str(path), "metrics": rec.get("metrics"),
                      "selection": rec.get("selection"), "skipped": True})
    return {"dataset": cfg.dataset.name, "folds": folds}


def run(cfg: RunConfig, catalog: Catalog, *, force: bool = False, progress: bool = True,
        client=None) -> dict:
    with catalog.lock(cfg.dataset.name, STAGE):
        units = plan(cfg, catalog, force=force)
        return finish(cfg, catalog, [run_unit(cfg, catalog, u, progress) for u in units])


def format_summary(summary: dict) -> str:
    lines = [f"label prior, dataset {summary['dataset']}"]
    for f in summary["folds"]:
        m = f.get("metrics") or {}
        state = "up to date" if f["skipped"] else "trained"
        lines.append(f"  fold {f['fold']} ({state}): lambda={m.get('lambda')} k={m.get('latent_dim')} "
                     f"frames={m.get('n_frames')} unknown left out={m.get('n_unknown_left_out')} "
                     f"recon F1={m.get('recon_f1', float('nan')):.3f} KL={m.get('kl', float('nan')):.2f} "
                     f"co-occurrence L2={m.get('cooc_l2', float('nan')):.3f}  {f['path']}")
    return "\n".join(lines)
