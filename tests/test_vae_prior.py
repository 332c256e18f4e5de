"""AU-VAE label prior: architecture, losses, frozen encoder, real-label behaviour, prior stage."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.aus import AUSet
from pipeline.config import ConsistencyForm, DatasetConfig, Layout, PriorConfig, RunConfig, TrainConfig, Variant
from pipeline.labels import cooccurrence
from pipeline.learning.losses import consistency_loss, kl_normal, weighted_bce
from pipeline.manifest import ManifestReport, finalize
from pipeline.models.heads import build_head
from pipeline.models.vae import FrozenEncoder, LabelVAE, fit_vae, load_prior, prior_metrics
from stages import prior as prior_stage
from stages import runner
from pipeline.learning.training import fit
from store.catalog import Catalog
from store.provenance import read_provenance

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BP4D_LABELS = SHARED / "data" / "labels" / "bp4d_au_occurrence.parquet"
COLS = AUSet.BP4D.columns


def _bp4d() -> pd.DataFrame:
    if not BP4D_LABELS.exists():
        pytest.skip(f"real BP4D labels not found at {BP4D_LABELS} (../shared is absent)")
    return pd.read_parquet(BP4D_LABELS)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_architecture():
    vae = LabelVAE(12, 8)
    assert sum(p.numel() for p in vae.parameters()) == 428
    mu, logvar = vae.encode(torch.rand(5, 12))
    assert mu.shape == logvar.shape == (5, 8)
    assert vae(torch.rand(5, 12))[0].shape == (5, 12)


def test_weighted_bce_masks_unknown_exactly():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.5]])
    y = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    w = torch.tensor([0.5, 1.5])
    bce = lambda z, t: -(t * np.log(1 / (1 + np.exp(-z))) + (1 - t) * np.log(1 - 1 / (1 + np.exp(-z))))
    expected = (0.5 * bce(0.0, 1) + 0.5 * bce(-1.0, 0) + 1.5 * bce(0.5, 1)) / 3
    assert float(weighted_bce(logits, y, w)) == pytest.approx(expected, rel=1e-6)
    all_unknown = torch.full((2, 2), float("nan"))
    z = torch.zeros(2, 2, requires_grad=True)
    loss = weighted_bce(z, all_unknown, w)
    loss.backward()
    assert float(loss.detach()) == 0.0


def test_kl_zero_at_standard_normal():
    assert torch.allclose(kl_normal(torch.zeros(3, 4), torch.zeros(3, 4)), torch.zeros(3))
    assert float(kl_normal(torch.ones(1, 2), torch.zeros(1, 2))[0]) == pytest.approx(1.0)


def _hand_encoder() -> FrozenEncoder:
    """An encoder whose outputs are easy by hand: L = 2 AUs, k = 1 latent dim,
    h = relu(y1 + y2), mu = h, logvar = 2 h (so sigma = exp(h), variance = exp(2 h))."""
    vae = LabelVAE(2, 1)
    with torch.no_grad():
        vae.fc1.weight.copy_(torch.tensor([[1.0, 1.0]]))
        vae.fc1.bias.zero_()
        vae.fc21.weight.fill_(1.0)
        vae.fc21.bias.zero_()
        vae.fc22.weight.fill_(2.0)
        vae.fc22.bias.zero_()
    return FrozenEncoder(vae)


def test_consistency_forms_against_hand_computed_values():
    """Logits 0 -> p = (0.5, 0.5): h_p = 1, mu_p = 1, logvar_p = 2 (sigma_p = e, var_p = e^2).
    Row 0, labels (1, 1): mu_g = 2, var_g = e^4. Row 1, labels (0, 0): mu_g = 0, var_g = 1.
    Row 2 has an unknown label: left out."""
    enc = _hand_encoder()
    logits = torch.zeros(3, 2)
    y = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, float("nan")]])
    e = math.e
    # code form (the reference): mse(mu) = ((1-2)^2 + (1-0)^2) / 2 = 1; mean(sigma_p) = e
    loss, n = consistency_loss(logits, y, enc, ConsistencyForm.CODE)
    assert n == 2 and float(loss) == pytest.approx(1 + e, rel=1e-6)  # 3.71828..., not 1 + e^2
    # paper form, variances: row 0: 1 + (e^2 - e^4)^2; row 1: 1 + (e^2 - 1)^2; their mean
    paper = ((1 + (e ** 2 - e ** 4) ** 2) + (1 + (e ** 2 - 1) ** 2)) / 2
    loss, n = consistency_loss(logits, y, enc, ConsistencyForm.PAPER)
    assert n == 2 and float(loss) == pytest.approx(paper, rel=1e-5)
    loss, n = consistency_loss(logits[2:], y[2:], enc)
    assert n == 0 and float(loss) == 0.0


def test_gradients_reach_head_through_frozen_encoder():
    torch.manual_seed(0)
    enc = FrozenEncoder(LabelVAE(12, 8))
    head = build_head(Variant.AU_VAE, 12)
    y = (torch.rand(4, 12) > 0.5).float()
    loss, n = consistency_loss(head(torch.randn(4, 768, 16, 16)), y, enc)
    loss.backward()  # the consistency loss alone
    assert n == 4
    assert head.classifier.fc2.weight.grad.abs().sum() > 0
    assert head.reduce.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in enc.parameters())


def test_encoder_bit_identical_after_head_training(make_feature_store):
    torch.manual_seed(0)
    vae = LabelVAE(12, 8)
    enc = FrozenEncoder(vae)
    before = {k: v.clone() for k, v in vae.state_dict().items()}

    store = make_feature_store(np.random.default_rng(0).normal(size=(8, 768, 16, 16)), 4)
    y = (np.random.default_rng(1).random((8, 12)) > 0.5).astype(np.float32)
    head = build_head(Variant.AU_VAE, 12)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, feature_shift=1)
    state = fit(head, store, np.arange(8)[:, None], y, torch.ones(12), cfg, enc,
                lambda e, s: None, progress=False)
    assert state["history"][-1]["cons_rows"] == 8
    for k, v in vae.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_real_bp4d_labels_reconstructed_and_cooccurrence_reproduced():
    df = _bp4d()
    y = df.loc[df["fold"] != 1, COLS].to_numpy(np.float32)
    y = y[np.random.default_rng(0).choice(len(y), 20000, replace=False)]
    vae, history = fit_vae(y, 8, 0.2, epochs=12, seed=0)
    assert history[-1] < history[0]
    m = prior_metrics(vae, y, seed=0)
    # independent AUs with the same rates: what ignoring co-occurrence costs
    rng = np.random.default_rng(0)
    indep = (rng.random((20000, 12)) < y.mean(0)).astype(np.float32)
    diff = np.nan_to_num(cooccurrence(indep) - cooccurrence(y))
    indep_l2 = float(np.sqrt((diff ** 2).sum()))
    print(f"BP4D prior: recon F1 {m['recon_f1']:.3f}, KL {m['kl']:.2f}, co-occurrence L2 "
          f"{m['cooc_l2']:.3f} (independent AUs: {indep_l2:.3f})")
    assert m["recon_f1"] > 0.7
    assert m["cooc_l2"] < 0.6 * indep_l2


def test_prior_stage_per_fold(tmp_path, write_image):
    df = _bp4d()
    # two subjects per fold, 300 frames each: small but real label vectors
    parts = [g.head(300) for _, g in df.groupby("subject") if g["subject"].iloc[0] in
             {"F001", "F002", "F003", "F005", "F004", "F006"}]
    small = pd.concat(parts).rename(columns={"task": "session"})
    small[COLS] = small[COLS].astype("Int8")
    small.loc[small.index[:7], "AU01"] = pd.NA  # unknown labels: left out and counted
    write_image(tmp_path / "data" / "x.png")  # the prior reads labels only: one image for all
    small.assign(image_path="x.png")[["subject", "session", "frame", "fold", "image_path", *COLS]] \
        .to_csv(tmp_path / "data" / "manifest.csv", index=False)
    cat = Catalog(tmp_path / "store")
    cfg = RunConfig(dataset=DatasetConfig(name="mini", layout=Layout.MANIFEST, root=tmp_path / "data",
                                          au_set=AUSet.BP4D, folds="column"),
                    store=tmp_path / "store", prior=PriorConfig(epochs=3, holdout_fraction=0.3))
    runner.execute("manifest", cfg, cat, progress=False)
    summary = runner.execute("prior", cfg, cat, progress=False)
    assert [f["fold"] for f in summary["folds"]] == [1, 2, 3]
    for f in summary["folds"]:
        m = f["metrics"]
        assert m["lambda"] in cfg.prior.lambdas and m["latent_dim"] == 8
        assert set(f["selection"]) == {"0.1", "0.2", "0.3"}
        assert m["n_frames"] + m["n_unknown_left_out"] == 1200
        vae, meta = load_prior(f["path"])
        assert meta["au_columns"] == COLS and meta["lambda"] == m["lambda"]
        assert read_provenance(Path(f["path"]))["metrics"] == m
    # F001 is in fold 3: its 7 unknown frames are training frames of folds 1 and 2 only
    assert [f["metrics"]["n_unknown_left_out"] for f in summary["folds"]] == [7, 7, 0]
    again = runner.execute("prior", cfg, cat, progress=False)
    assert all(f["skipped"] for f in again["folds"])
    assert "lambda=" in prior_stage.format_summary(again)


def _union15() -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """The real BP4D and DISFA label tables in the 15-AU union: an AU a dataset does not label
    is NaN (unknown) on its rows."""
    from pipeline.aus import AUSet

    disfa_path = BP4D_LABELS.with_name("disfa_au_occurrence.parquet")
    if not disfa_path.exists():
        pytest.skip(f"real DISFA labels not found at {disfa_path} (../shared is absent)")
    union = AUSet.UNION15.columns
    rng = np.random.default_rng(0)
    parts = []
    for df, cols in ((_bp4d(), AUSet.BP4D.columns), (pd.read_parquet(disfa_path), AUSet.DISFA.columns)):
        df = df.iloc[rng.choice(len(df), 15000, replace=False)]
        y = np.full((len(df), len(union)), np.nan, np.float32)
        for c in cols:
            y[:, union.index(c)] = df[c].to_numpy(np.float32)
        parts.append(y)
    return np.concatenate(parts), union, AUSet.BP4D.columns, AUSet.DISFA.columns


def test_partial_label_prior_recovers_cooccurrence_of_aus_labelled_together():
    """A prior trained on BP4D and DISFA rows together, each labelling only its own AUs, learns
    the co-occurrence of the AUs each dataset labels: label vectors passed through its encoder
    (q(z | y, m), what the consistency loss uses), decoded and sampled reproduce P(j|i) far better
    than independent AUs would; unknown entries never count as absent. Measured (8 epochs): L2
    0.61 vs 1.49 (BP4D's 12 AUs), 0.81 vs 1.67 (DISFA's 8); 0.41 and 0.29 after 30 epochs."""
    y, union, bp4d, disfa = _union15()
    vae, history = fit_vae(y, 8, 0.2, epochs=8, seed=0, masked=True)
    assert vae.masked and history[-1] < history[0]
    with torch.no_grad():
        mu, logvar = vae.encode(torch.as_tensor(y))
        z = LabelVAE.reparameterise(mu, logvar)
        samples = torch.bernoulli(torch.sigmoid(vae.decode(z))).numpy()
    rng = np.random.default_rng(1)
    for cols in (bp4d, disfa):
        idx = [union.index(c) for c in cols]
        rows = ~np.isnan(y[:, idx]).any(1)  # the rows that label these AUs
        labels = y[rows][:, idx]
        indep = (rng.random((20000, len(idx))) < labels.mean(0)).astype(np.float32)
        l2 = lambda a: float(np.sqrt((np.nan_to_num(cooccurrence(a) - cooccurrence(labels)) ** 2).sum()))  # noqa: E731
        print(f"{len(idx)} AUs: through the prior L2 {l2(samples[rows][:, idx]):.3f}, "
              f"independent AUs {l2(indep):.3f}")
        assert l2(samples[rows][:, idx]) < 0.6 * l2(indep)
    m = prior_metrics(vae, y, n_samples=5000, seed=0)
    assert m["recon_f1"] > 0.5 and m["cooc_l2"] < 2.0
    # an unknown entry is not an absent one: the encoder sees the mask
    one = torch.zeros(1, len(union))
    unknown = one.clone()
    unknown[0, union.index("AU25")] = float("nan")
    assert not torch.allclose(vae.encode(one)[0], vae.encode(unknown)[0])


def test_partial_label_consistency_loss_uses_the_labels_mask():
    torch.manual_seed(0)
    vae = LabelVAE(4, 3, masked=True)
    enc = FrozenEncoder(vae)
    y = torch.tensor([[1.0, float("nan"), 0.0, 1.0], [float("nan")] * 4])
    logits = torch.randn(2, 4, requires_grad=True)
    loss, n = consistency_loss(logits, y, enc, ConsistencyForm.PAPER)
    assert n == 1  # the row without any label is skipped; the other is used despite its NaN
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[0, 0] != 0  # the unknown AU gets no gradient
