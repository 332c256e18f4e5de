"""Losses: frequency-weighted masked BCE, the VAE's KL, and the consistency loss (Eqs. 1-4).

Unknown labels are NaN in every label tensor. They are masked out of the BCE. The consistency
loss feeds the label vector to the prior's encoder: a full-label prior has no notion of
"unknown", so rows with any unknown label are left out of L_cons (and counted by the caller); a
partial-label prior (mixed datasets) takes the mask of known labels instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.config import ConsistencyForm


def weighted_bce(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over known (row, AU) entries of w_AU * BCE-with-logits.  logits, y: (B, L); w: (L,)

    `weights` are the class weights of pipeline.labels.class_weights rescaled to sum to L (the
    reference code's scaling), so an unweighted problem gives the plain mean BCE. A batch with
    no known label gives 0 (attached to the graph, so backward still works).
    """
    known = ~torch.isnan(y)  # (B, L)
    target = torch.where(known, y, torch.zeros_like(y))
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (B, L)
    per = per * weights.to(per)[None, :] * known
    n = known.sum()
    return per.sum() / n.clamp(min=1)


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) summed over latent dims, per row. (B,)"""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def vae_loss(logits: torch.Tensor, y_clean: torch.Tensor, mu: torch.Tensor,
             logvar: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 2 over a batch: (BCE summed + lam * KL summed, BCE sum, KL sum). NaN labels
    (unknown, in partial-label priors) are left out of the BCE."""
    known = ~torch.isnan(y_clean)
    bce = (F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(y_clean), reduction="none")
           * known).sum()
    kl = kl_normal(mu, logvar).sum()
    return bce + lam * kl, bce, kl


def consistency_loss(logits: torch.Tensor, y: torch.Tensor, encoder,
                     form: ConsistencyForm = ConsistencyForm.PAPER) -> tuple[torch.Tensor, int]:
    """L_cons between predictions and labels in the frozen encoder's latent space (Eq. 3).

    PAPER: mean over rows of ||mu_p - mu_g||^2 + ||Sigma_p - Sigma_g||^2, with Sigma the
    diagonal of the covariance of N(mu, Sigma), i.e. the variance exp(logvar). CODE (the
    reference code): mse(mu_p, mu_g) + mean(sigma_p) with sigma = exp(0.5 * logvar), the standard
    deviation its VAE returns in eval mode; sigma_g unused. p = encoder(sigmoid(logits)), g = encoder(labels). A full-label prior skips
    rows with any unknown label; a partial-label prior (`encoder.masked`) reads both under the
    labels' mask and skips only rows with no label. Returns (loss, rows used); no usable row: a
    zero attached to the graph.
    """
    known = ~torch.isnan(y)  # (B, L)
    # a partial-label prior reads both vectors under the labels' mask: an AU a row does not
    # label enters neither; a full-label prior needs fully labelled rows
    masked = getattr(encoder, "masked", False)
    full = known.any(dim=1) if masked else known.all(dim=1)  # (B,)
    n = int(full.sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    args = (known[full],) if masked else ()
    mu_p, logvar_p = encoder(torch.sigmoid(logits[full]), *args)  # (n, k): gradients reach the head
    with torch.no_grad():
        mu_g, logvar_g = encoder(y[full], *args)
    if ConsistencyForm(form) is ConsistencyForm.PAPER:
        loss = ((mu_p - mu_g).pow(2).sum(1) + (logvar_p.exp() - logvar_g.exp()).pow(2).sum(1)).mean()
    else:
        # the reference's VAE returns sigma = exp(0.5 * logvar) (models/AE.py), not the variance
        loss = F.mse_loss(mu_p, mu_g) + torch.exp(0.5 * logvar_p).mean()
    return loss, n
