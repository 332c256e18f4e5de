"""AU-VAE label prior (reference "AU-VAE label prior"; paper Section IV-B, Eq. 2).

A tiny VAE on AU label vectors: fc1 L->k + ReLU; fc21, fc22 k->k (mu, log-variance);
reparameterise; fc3 k->k + ReLU; fc4 k->L logits. 428 parameters for L = 12, k = 8.
Its encoder, frozen, supplies the consistency loss while heads train (`FrozenEncoder`).

Partial labels (`masked=True`, for runs mixing datasets that each label only some AUs): the
encoder reads [y * m, m] (2L inputs; m = 1 where the AU is labelled, unknown values read as 0 and
flagged by m = 0), and the reconstruction loss covers the labelled entries only. So an AU a dataset
does not label never reaches the prior as "absent", and the prior still learns the co-occurrence
of the AUs labelled together (measured on the real BP4D and DISFA tables: tests/test_vae_prior.py).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.learning.losses import kl_normal, vae_loss


def with_mask(y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 2L) [y * m, m] for a partial-label encoder; m = known entries (not NaN) by default."""
    if mask is None:
        mask = ~torch.isnan(y)
    mask = mask.to(y.dtype)
    return torch.cat([torch.nan_to_num(y) * mask, mask], dim=1)


class LabelVAE(nn.Module):
    def __init__(self, n_aus: int, latent: int, masked: bool = False):
        super().__init__()
        self.n_aus, self.latent, self.masked = n_aus, latent, masked
        self.fc1 = nn.Linear(2 * n_aus if masked else n_aus, latent)
        self.fc21 = nn.Linear(latent, latent)  # mu
        self.fc22 = nn.Linear(latent, latent)  # log-variance
        self.fc3 = nn.Linear(latent, latent)
        self.fc4 = nn.Linear(latent, n_aus)

    def encode(self, y: torch.Tensor, mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) labels or probabilities -> mu (B, k), logvar (B, k); a partial-label prior
        also takes the mask of known entries (default: the entries that are not NaN)."""
        h = F.relu(self.fc1(with_mask(y, mask) if self.masked else y))
        return self.fc21(h), self.fc22(h)

    @staticmethod
    def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, k) latent -> (B, L) logits."""
        return self.fc4(F.relu(self.fc3(z)))

    def forward(self, y: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(y, mask)
        z = self.reparameterise(mu, logvar) if self.training else mu
        return self.decode(z), mu, logvar

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Probabilities (n, L) decoded from z ~ N(0, I): what the prior believes labels look like."""
        z = torch.randn(n, self.latent, generator=generator)
        return torch.sigmoid(self.decode(z))


class FrozenEncoder(nn.Module):
    """The prior's encoder with every weight frozen (requires_grad False, eval mode).

    Gradients still flow *through* it to its input, i.e. to the head's predictions.
    """

    def __init__(self, vae: LabelVAE):
        super().__init__()
        self.masked = vae.masked
        self.fc1, self.fc21, self.fc22 = vae.fc1, vae.fc21, vae.fc22
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenEncoder":  # stays in eval whatever the parent does
        return super().train(False)

    def forward(self, y: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.fc1(with_mask(y, mask) if self.masked else y))
        return self.fc21(h), self.fc22(h)


def load_prior(path, map_location: str = "cpu") -> tuple[LabelVAE, dict]:
    """Load a prior saved by stages.prior: (vae, saved dict without the weights)."""
    blob = torch.load(path, map_location=map_location, weights_only=True)
    vae = LabelVAE(blob["n_aus"], blob["latent"], bool(blob.get("masked", False)))
    vae.load_state_dict(blob["state_dict"])
    vae.eval()
    return vae, {k: v for k, v in blob.items() if k != "state_dict"}


def fit_vae(y: np.ndarray, latent: int, lam: float, *, epochs: int, lr: float = 1e-3,
            batch_size: int = 128, noise: float = 0.2, seed: int = 0, masked: bool = False,
            on_epoch: Callable[[int, float], None] | None = None) -> tuple[LabelVAE, list[float]]:
    """Train a prior on label vectors y (N, L) in {0, 1}; returns (vae, loss/frame per epoch).

    Eq. 2: the input is y + U(-noise, noise), the target the clean y; BCE summed + lam * KL;
    Adam without weight decay. The last epoch's weights are returned. Without `masked`, every
    entry must be known; with it, NaN entries are unknown: masked from the input (m = 0) and from
    the reconstruction loss, and each row needs at least one known entry.
    """
    bad = np.isnan(y).all(1) if masked else np.isnan(y).any(1)
    if len(y) == 0 or bad.any():
        raise ValueError(f"the label prior needs {'a known label on every' if masked else 'fully-known'}"
                         f" row (got {len(y)} rows, {int(bad.sum())} without)")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # weight init and reparameterisation noise
    vae = LabelVAE(y.shape[1], latent, masked)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    data = torch.as_tensor(y, dtype=torch.float32)  # (N, L)
    history = []
    vae.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(data), generator=gen)
        total = 0.0
        for i in range(0, len(data), batch_size):
            clean = data[perm[i:i + batch_size]]  # (B, L), NaN = unknown (masked priors)
            noisy = clean + (torch.rand(clean.shape, generator=gen) * 2 - 1) * noise
            logits, mu, logvar = vae(noisy)
            loss, _, _ = vae_loss(logits, clean, mu, logvar, lam)  # over the known entries
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        history.append(total / len(data))
        if on_epoch:
            on_epoch(epoch + 1, history[-1])
    vae.eval()
    return vae, history


@torch.no_grad()
def negative_elbo(vae: LabelVAE, y: np.ndarray, seed: int = 0) -> float:
    """Mean per frame of BCE(y, decode(z)) + KL, z ~ q(z|y): a lambda-free held-out criterion."""
    torch.manual_seed(seed)
    data = torch.as_tensor(y, dtype=torch.float32)
    mu, logvar = vae.encode(data)
    logits = vae.decode(LabelVAE.reparameterise(mu, logvar))
    _, bce, kl = vae_loss(logits, data, mu, logvar, 1.0)  # known entries only
    return float(bce + kl) / len(data)


@torch.no_grad()
def prior_metrics(vae: LabelVAE, y: np.ndarray, n_samples: int = 20000, seed: int = 0) -> dict:
    """Reconstruction F1 (mean over AUs, threshold 0.5 on decode(mu)), KL per frame, and the L2
    (Frobenius) distance between the co-occurrence matrix P(j|i) of Bernoulli samples drawn from
    the prior (z ~ N(0, I); through the encoder for a partial-label prior) and that of the
    labels y (N, L)."""
    from sklearn.metrics import f1_score

    from pipeline.labels import cooccurrence

    data = torch.as_tensor(y, dtype=torch.float32)
    mu, logvar = vae.encode(data)
    recon = (torch.sigmoid(vae.decode(mu)) >= 0.5).numpy().astype(np.int8)
    known = ~np.isnan(y)  # partial labels: each AU's F1 over the frames that label it
    f1 = float(np.mean([f1_score(y[known[:, j], j].astype(np.int8), recon[known[:, j], j],
                                 zero_division=0) for j in range(y.shape[1]) if known[:, j].any()]))
    gen = torch.Generator().manual_seed(seed)
    if vae.masked:
        # a partial-label prior mixes datasets that label different AUs: sampled from N(0, I) its
        # decoder mixes them too, so the co-occurrence it reproduces is measured through the
        # encoder (what the consistency loss uses): z ~ q(z | y, m) of the rows, decoded,
        # sampled, and unknown entries left unknown; P(j|i) over the pairs labelled together
        eps = torch.randn(mu.shape, generator=gen)
        probs = torch.sigmoid(vae.decode(mu + eps * torch.exp(0.5 * logvar)))
        samples = torch.bernoulli(probs, generator=gen).numpy().astype(np.float32)
        samples[np.isnan(y)] = np.nan
    else:
        probs = vae.sample(n_samples, generator=gen)
        samples = torch.bernoulli(probs, generator=gen).numpy().astype(np.float32)
    diff = np.nan_to_num(cooccurrence(samples) - cooccurrence(y.astype(np.float32)))
    return {"recon_f1": float(f1), "kl": float(kl_normal(mu, logvar).mean()),
            "cooc_l2": float(np.sqrt((diff ** 2).sum()))}
