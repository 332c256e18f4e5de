"""AU-VAE label prior (reference "AU-VAE label prior"; paper Section IV-B, Eq. 2).

A tiny VAE on AU label vectors: fc1 L->k + ReLU; fc21, fc22 k->k (mu, log-variance);
reparameterise; fc3 k->k + ReLU; fc4 k->L logits. 428 parameters for L = 12, k = 8.
Its encoder, frozen, supplies the consistency loss while heads train (`FrozenEncoder`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.losses import kl_normal, vae_loss


class LabelVAE(nn.Module):
    def __init__(self, n_aus: int, latent: int):
        super().__init__()
        self.n_aus, self.latent = n_aus, latent
        self.fc1 = nn.Linear(n_aus, latent)
        self.fc21 = nn.Linear(latent, latent)  # mu
        self.fc22 = nn.Linear(latent, latent)  # log-variance
        self.fc3 = nn.Linear(latent, latent)
        self.fc4 = nn.Linear(latent, n_aus)

    def encode(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) labels or probabilities -> mu (B, k), logvar (B, k)."""
        h = F.relu(self.fc1(y))
        return self.fc21(h), self.fc22(h)

    @staticmethod
    def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, k) latent -> (B, L) logits."""
        return self.fc4(F.relu(self.fc3(z)))

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(y)
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
        self.fc1, self.fc21, self.fc22 = vae.fc1, vae.fc21, vae.fc22
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenEncoder":  # stays in eval whatever the parent does
        return super().train(False)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.fc1(y))
        return self.fc21(h), self.fc22(h)


def load_prior(path, map_location: str = "cpu") -> tuple[LabelVAE, dict]:
    """Load a prior saved by stages.prior: (vae, saved dict without the weights)."""
    blob = torch.load(path, map_location=map_location, weights_only=True)
    vae = LabelVAE(blob["n_aus"], blob["latent"])
    vae.load_state_dict(blob["state_dict"])
    vae.eval()
    return vae, {k: v for k, v in blob.items() if k != "state_dict"}


def fit_vae(y: np.ndarray, latent: int, lam: float, *, epochs: int, lr: float = 1e-3,
            batch_size: int = 128, noise: float = 0.2, seed: int = 0,
            on_epoch: Callable[[int, float], None] | None = None) -> tuple[LabelVAE, list[float]]:
    """Train a prior on fully-known label vectors y (N, L) in {0, 1}; returns (vae, loss/frame per epoch).

    Eq. 2: the input is y + U(-noise, noise), the target the clean y; BCE summed + lam * KL;
    Adam without weight decay. The last epoch's weights are returned.
    """
    if len(y) == 0 or np.isnan(y).any():
        raise ValueError("the label prior trains on fully-known label vectors only (got "
                         f"{len(y)} rows, {int(np.isnan(y).sum())} unknown entries)")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # weight init and reparameterisation noise
    vae = LabelVAE(y.shape[1], latent)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    data = torch.as_tensor(y, dtype=torch.float32)  # (N, L)
    history = []
    vae.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(data), generator=gen)
        total = 0.0
        for i in range(0, len(data), batch_size):
            clean = data[perm[i:i + batch_size]]  # (B, L)
            noisy = clean + (torch.rand(clean.shape, generator=gen) * 2 - 1) * noise
            logits, mu, logvar = vae(noisy)
            loss, _, _ = vae_loss(logits, clean, mu, logvar, lam)
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
    _, bce, kl = vae_loss(logits, data, mu, logvar, 1.0)
    return float(bce + kl) / len(data)


@torch.no_grad()
def prior_metrics(vae: LabelVAE, y: np.ndarray, n_samples: int = 20000, seed: int = 0) -> dict:
    """Reconstruction F1 (mean over AUs, threshold 0.5 on decode(mu)), KL per frame, and the L2
    (Frobenius) distance between the co-occurrence matrix P(j|i) of Bernoulli samples drawn from
    the prior (z ~ N(0, I)) and that of the labels y (N, L)."""
    from sklearn.metrics import f1_score

    from pipeline.labels import cooccurrence

    data = torch.as_tensor(y, dtype=torch.float32)
    mu, logvar = vae.encode(data)
    recon = (torch.sigmoid(vae.decode(mu)) >= 0.5).numpy().astype(np.int8)
    f1 = f1_score(y.astype(np.int8), recon, average="macro", zero_division=0)
    gen = torch.Generator().manual_seed(seed)
    probs = vae.sample(n_samples, generator=gen)
    samples = torch.bernoulli(probs, generator=gen).numpy().astype(np.float32)
    diff = np.nan_to_num(cooccurrence(samples) - cooccurrence(y.astype(np.float32)))
    return {"recon_f1": float(f1), "kl": float(kl_normal(mu, logvar).mean()),
            "cooc_l2": float(np.sqrt((diff ** 2).sum()))}
