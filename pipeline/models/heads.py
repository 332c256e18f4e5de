"""Trainable AU heads on cached FAN features (reference "Heads"; paper Sections IV-A, IV-C).

Every head has the same call: `forward(f_t, f_prev=None, f_next=None) -> logits (B, n_AU)`.
Static heads (AU-FAN, AU-VAE) ignore the neighbours; temporal heads (AU-TDN, AUNet) need them.
AU-VAE and AUNet differ from AU-FAN and AU-TDN only by the consistency loss used in training.

The heads are convolutional up to a global average pool, so they accept any spatial size that
survives four max-pools (the real features are 64x64; tests use 16x16).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from face_alignment.models.fan import ConvBlock
from torch import nn

from pipeline.config import Variant

FEATURE_CHANNELS = 768  # concat(F_l, H1*A, H2*A): 3 x 256
HIDDEN = 256  # head width (FAN's feature width)
MLP_HIDDEN = 128
STATIC_WEIGHT = 0.9  # a: weight of the static path when the motion path is added
MOTION_WEIGHT = 0.1  # b: weight of the motion path


def _stage(channels: int = HIDDEN) -> nn.Sequential:
    """FAN's multi-scale residual block followed by a 2x max-pool."""
    return nn.Sequential(ConvBlock(channels, channels), nn.MaxPool2d(2))


class Classifier(nn.Module):
    """GAP output -> Linear(256,128), BatchNorm1d, ReLU, Linear(128, n_AU)."""

    def __init__(self, n_aus: int):
        super().__init__()
        self.fc1 = nn.Linear(HIDDEN, MLP_HIDDEN)
        self.bn = nn.BatchNorm1d(MLP_HIDDEN)
        self.fc2 = nn.Linear(MLP_HIDDEN, n_aus)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 256, h, w) -> (B, n_AU)
        x = x.mean(dim=(2, 3))  # global average pool: (B, 256)
        return self.fc2(F.relu(self.bn(self.fc1(x))))


class StaticHead(nn.Module):
    """AU-FAN (and AU-VAE): conv1x1 768->256; 4 x [ConvBlock, MaxPool]; GAP; MLP."""

    temporal = False

    def __init__(self, n_aus: int):
        super().__init__()
        self.reduce = nn.Conv2d(FEATURE_CHANNELS, HIDDEN, kernel_size=1)
        self.body = nn.Sequential(*[_stage() for _ in range(4)])
        self.classifier = Classifier(n_aus)

    def forward(self, f_t: torch.Tensor, f_prev: Optional[torch.Tensor] = None,
                f_next: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.reduce(f_t)  # (B, 256, H, W)
        x = self.body(x)  # (B, 256, H/16, W/16)
        return self.classifier(x)  # (B, n_AU)


class TDNHead(nn.Module):
    """AU-TDN (and AUNet): static path plus a low-resolution temporal-difference path."""

    temporal = True

    def __init__(self, n_aus: int, a: float = STATIC_WEIGHT, b: float = MOTION_WEIGHT):
        super().__init__()
        self.a, self.b = a, b
        self.reduce = nn.Conv2d(FEATURE_CHANNELS, HIDDEN, kernel_size=1)
        self.reduce_diff = nn.Conv2d(2 * FEATURE_CHANNELS, HIDDEN, kernel_size=1)
        self.stage1 = _stage()
        self.stage1_diff = _stage()
        self.body = nn.Sequential(*[_stage() for _ in range(3)])
        self.classifier = Classifier(n_aus)

    def forward(self, f_t: torch.Tensor, f_prev: Optional[torch.Tensor] = None,
                f_next: Optional[torch.Tensor] = None) -> torch.Tensor:
        if f_prev is None or f_next is None:
            raise ValueError("a temporal head needs f_prev and f_next (the frames t-T and t+T)")
        diff = torch.cat((f_t - f_prev, f_next - f_t), dim=1)  # (B, 1536, H, W)
        d = self.reduce_diff(F.avg_pool2d(diff, 2))  # (B, 256, H/2, W/2)
        x = self.reduce(f_t)  # (B, 256, H, W)
        x = self.a * x + self.b * F.interpolate(d, size=x.shape[-2:], mode="nearest")
        x = self.stage1(x)  # (B, 256, H/2, W/2)
        d = self.stage1_diff(d)  # (B, 256, H/4, W/4)
        x = self.a * x + self.b * F.interpolate(d, size=x.shape[-2:], mode="nearest")
        x = self.body(x)  # (B, 256, H/16, W/16)
        return self.classifier(x)  # (B, n_AU)


def build_head(variant: Variant, n_aus: int) -> nn.Module:
    """The head of a variant: TDN for the temporal variants, the static head otherwise."""
    variant = Variant(variant)
    return TDNHead(n_aus) if variant.temporal else StaticHead(n_aus)


def n_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_body(model: nn.Module, state: dict) -> list[str]:
    """Load another head's weights except a classifier output layer of another size.

    DISFA heads start from BP4D heads this way (shared body, new classifier output). Returns the
    names of the parameters that were left at their fresh initialisation.
    """
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(keep, strict=False)
    return sorted(k for k in own if k not in keep)
