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
import torch
from tqdm.auto import tqdm

from pipeline.config import RunConfig
from pipeline.errors import InputError, StaleArtifact
from pipeline.folds import ALL_SUBJECTS, fold_name, holdout_subjects, training_rows
from pipeline.manifest import au_set_of, label_matrix
from pipeline.models.vae import fit_vae, negative_elbo, prior_metrics
from stages.contract import Plan, UnitResult
from store import manifests, mix
from store.catalog import Catalog
from store.codekey import code_key
from store.identity import prior_identity
from store.models import PRIOR_CODE, prior_inputs, prior_key
from store.provenance import atomic_path, read_provenance, record, trusted, write_provenance

STAGE = "prior"


@dataclass(frozen=True)
class PriorUnit:
    dataset: str
    fold: int
    key: str  # the prior's expected key

    @property
    def name(self) -> str:
        return fold_name(self.fold)

    size = 0

    def __str__(self) -> str:  # task names in Prefect
        return self.name


def reads(cfg: RunConfig) -> list[tuple[str, str]]:
    return [(cfg.dataset.name, "manifest")]


def plan(cfg: RunConfig, catalog: Catalog, *, force: bool = False, select=None) -> Plan:
    name = cfg.dataset.name
    rec = manifests.checked(cfg, catalog)
    units, skipped = [], []
    for fold in prior_folds(cfg, catalog, select):
        unit = PriorUnit(name, fold, prior_key(cfg, rec, fold))
        if force or trusted(catalog.prior(cfg, fold), unit.key) is None:
            units.append(unit)
        else:
            skipped.append(unit.name)
    return Plan(units, skipped, {"select": select})


def prior_folds(cfg: RunConfig, catalog: Catalog, select: dict | None = None) -> list[int]:
    """Every test fold, and `all` (every subject) when the config or the command asks for it."""
    folds = manifests.test_folds(catalog, cfg.dataset.name)
    wanted = list((select or {}).get("folds") or cfg.train.folds or [])
    return folds + ([ALL_SUBJECTS] if ALL_SUBJECTS in wanted else [])


def prepare(cfg: RunConfig, catalog: Catalog, plan: Plan) -> None:
    """Nothing to create: each prior file is written whole by its unit."""


def _fit(cfg: RunConfig, y: np.ndarray, lam: float, bar, what: str):
    p = cfg.prior

    def on_epoch(epoch: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix_str(f"{what} lambda={lam:g} epoch {epoch} loss/frame {loss:.3f}")

    return fit_vae(y, p.k(cfg.dataset.au_set), lam, epochs=p.epochs, lr=p.lr,
                   batch_size=p.batch_size, noise=p.noise, seed=p.seed, masked=mix.is_mix(cfg),
                   on_epoch=on_epoch)


def run_unit(cfg: RunConfig, catalog: Catalog, unit: PriorUnit, progress=None) -> dict:
    table = manifests.load(catalog, unit.dataset)
    au_set = au_set_of(table)
    df = table.select(["subject", "fold"]).to_pandas()
    y = label_matrix(table, au_set)  # (N, L), NaN = unknown
    train = training_rows(df["fold"].to_numpy(), unit.fold)
    # a mixed run's members each label some AUs: its prior takes partial label vectors (masked);
    # a single dataset's prior takes whole vectors, as the paper's does
    known = ~np.isnan(y).all(axis=1) if mix.is_mix(cfg) else ~np.isnan(y).any(axis=1)
    n_unknown = int((train & ~known).sum())
    rows = train & known
    if not rows.any():
        raise InputError(f"dataset '{unit.dataset}' fold {unit.fold}: no fully-labelled training "
                         f"frame to train the label prior on ({n_unknown} left out as unknown)")
    subjects = df["subject"].astype(str).to_numpy()
    lambdas = tuple(cfg.prior.lambdas)
    held = holdout_subjects(subjects[rows].tolist(), cfg.prior.holdout_fraction, cfg.prior.seed)
    is_held = np.isin(subjects, held) & rows
    select = len(lambdas) > 1 and is_held.any() and (rows & ~is_held).any()
    n_fits = (len(lambdas) if select else 0) + 1
    bar = tqdm(total=n_fits * cfg.prior.epochs, desc=f"prior {unit.dataset} fold {unit.fold}",
               disable=progress is None, leave=False)
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
    out = catalog.prior(cfg, unit.fold)
    with atomic_path(out, ".pt") as tmp:
        torch.save({"state_dict": vae.state_dict(), "n_aus": vae.n_aus, "latent": vae.latent,
                    "masked": vae.masked,
                    "lambda": lam, "au_set": au_set.value, "au_columns": au_set.columns,
                    "fold": unit.fold, "history": history, "selection": selection,
                    "metrics": metrics}, tmp)
    rec = record(stage=STAGE, name=catalog.rel(out), identity=prior_identity(cfg),
                 inputs=prior_inputs(manifests.record(catalog, unit.dataset), unit.fold),
                 code=code_key(PRIOR_CODE), extra={"metrics": metrics, "selection": selection})
    if rec["key"] != unit.key:
        raise StaleArtifact(f"{out}: the manifest changed while the prior trained; run again")
    write_provenance(out, rec)
    return {"fold": unit.fold, "path": str(out), "metrics": metrics, "selection": selection,
            "skipped": False}


def finish(cfg: RunConfig, catalog: Catalog, plan: Plan, results: list[UnitResult]) -> dict:
    done = {r.data["fold"]: r.data for r in results if r.ok}
    folds = []
    for fold in prior_folds(cfg, catalog, plan.context.get("select")):
        if fold in done:
            folds.append(done[fold])
            continue
        path = catalog.prior(cfg, fold)
        rec = read_provenance(path) or {}
        failed = fold_name(fold) not in plan.skipped
        folds.append({"fold": fold, "path": str(path), "metrics": rec.get("metrics"),
                      "selection": rec.get("selection"), "skipped": not failed, "failed": failed})
    return {"dataset": cfg.dataset.name, "folds": folds}


def format_summary(summary: dict) -> str:
    lines = [f"label prior, dataset {summary['dataset']}"]
    for f in summary["folds"]:
        m = f.get("metrics") or {}
        state = "FAILED" if f.get("failed") else ("up to date" if f["skipped"] else "trained")
        lines.append(f"  fold {f['fold']} ({state}): lambda={m.get('lambda')} k={m.get('latent_dim')} "
                     f"frames={m.get('n_frames')} unknown left out={m.get('n_unknown_left_out')} "
                     f"recon F1={m.get('recon_f1', float('nan')):.3f} KL={m.get('kl', float('nan')):.2f} "
                     f"co-occurrence L2={m.get('cooc_l2', float('nan')):.3f}  {f['path']}")
    return "\n".join(lines)
