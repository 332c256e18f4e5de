"""A head split in two for ONNX Runtime: a per-frame stem and a per-item rest, equal to the head.

The head's first layers are linear in the features: `reduce` is a 1x1 convolution, and the
temporal heads' difference path is `reduce_diff(avg_pool2d(cat(f_t - f_prev, f_next - f_t), 2))`,
a 1x1 convolution of an average pool of differences. With W = [W_a | W_b] (the 1x1 weight's
halves over the two differences) and p = avg_pool2d(f, 2), that is

    W_a p_t - W_a p_prev + W_b p_next - W_b p_t + bias = (a_t - a_prev) + (b_next - b_t) + bias

with a = W_a p and b = W_b p computed once per frame. So `HeadStem` runs once per crop, after
its FAN batch: r = reduce(f) (B, 256, h, w), and for temporal heads a, b (B, 256, h/2, w/2);
`HeadRest` runs once per item on (r_t, a_t, b_t, a_prev, b_next), or (r_t,) for static heads.
The unsplit head converts three 768-channel float16 maps to float32, subtracts, concatenates and
pools them for every item; the split does it once per frame (measured, AUNet head at 256 px,
2-core AMD EPYC, ONNX Runtime: 61 ms an item unsplit against 13 + 31 ms split).

Why a second spelling of TDNHead's forward instead of a method on it: the training stages' code
keys (store/codekey.py) hash the head classes, so any edit there would make every trained head
stale. The split is checked against the unsplit head in torch on every load of its exports
(pipeline/predict/engine.py), so the two cannot drift apart unnoticed; tests/test_runtime.py
checks it for both head families.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

STEM_TEMPORAL = ("r", "a", "b")  # the stem's outputs: reduce(f), W_a p, W_b p
REST_TEMPORAL = ("r", "a", "b", "a_prev", "b_next")  # the rest's inputs


def _temporal(head: nn.Module) -> bool:
    return bool(getattr(head, "temporal", False))


def stem_outputs(head: nn.Module) -> list[str]:
    return list(STEM_TEMPORAL if _temporal(head) else STEM_TEMPORAL[:1])


def rest_inputs(head: nn.Module) -> list[str]:
    return list(REST_TEMPORAL if _temporal(head) else REST_TEMPORAL[:1])


class HeadStem(nn.Module):
    """features (B, 768, h, w), float16 as the training cache held them -> float32
    r (B, 256, h, w), and for temporal heads a, b (B, 256, h/2, w/2) (no bias: the rest adds it)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = f.float()
        r = self.head.reduce(f)  # (B, 256, h, w)
        if not _temporal(self.head):
            return (r,)
        p = F.avg_pool2d(f, 2)  # (B, 768, h/2, w/2)
        w = self.head.reduce_diff.weight  # (256, 1536, 1, 1): [W_a | W_b]
        c = w.shape[1] // 2
        return r, F.conv2d(p, w[:, :c]), F.conv2d(p, w[:, c:])


class HeadRest(nn.Module):
    """The head after its stem: (r_t[, a_t, b_t, a_prev, b_next]) -> logits (B, n_AU)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, r: torch.Tensor, a: Optional[torch.Tensor] = None,
                b: Optional[torch.Tensor] = None, a_prev: Optional[torch.Tensor] = None,
                b_next: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.head
        if not _temporal(h):
            return h.classifier(h.body(r))  # (B, n_AU)
        # the head's difference path, from the per-frame halves (the module docstring)
        d = (a - a_prev) + (b_next - b) + h.reduce_diff.bias.view(1, -1, 1, 1)  # (B, 256, h/2, w/2)
        x = h.a * r + h.b * F.interpolate(d, size=r.shape[-2:], mode="nearest")
        x = h.stage1(x)  # (B, 256, h/2, w/2)
        d = h.stage1_diff(d)  # (B, 256, h/4, w/4)
        x = h.a * x + h.b * F.interpolate(d, size=x.shape[-2:], mode="nearest")
        return h.classifier(h.body(x))  # (B, n_AU)


@dataclass(frozen=True)
class Stems:
    """Per-crop stem outputs, indexed like one tensor along the crops: `stems[i:i + 1]`,
    `stems[[i, j]]`, `len(stems)` (what the predictor's buffers do with features). Each crop's
    arrays are its own (the stem runs crop by crop: as fast as in batches of 8, 13 against 15 ms
    a crop, and without a batch's 280 MB in ONNX Runtime's arena), so a buffered crop keeps no
    batch alive and an item's inputs are passed with no copy."""

    rows: tuple[tuple[np.ndarray, ...], ...]  # rows[i]: crop i's outputs, each (1, 256, ., .) float32

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> "Stems":
        if isinstance(index, slice):
            return Stems(self.rows[index])
        return Stems(tuple(self.rows[i] for i in index))

    @property
    def parts(self) -> tuple[np.ndarray, ...]:
        """Each output over the crops, (N, 256, ., .): one crop's own arrays, or concatenated."""
        if len(self.rows) == 1:
            return self.rows[0]
        return tuple(np.concatenate(p) for p in zip(*self.rows))

    @staticmethod
    def cat(blocks: Sequence["Stems"]) -> "Stems":
        return Stems(tuple(r for b in blocks for r in b.rows))


def rest_args(t: Sequence, prev: Optional[Sequence] = None, nxt: Optional[Sequence] = None) -> list:
    """The rest's inputs from the stem outputs (arrays or tensors: `Stems.parts`, or what
    HeadStem returns) of frames t, and for temporal heads t-T and t+T."""
    if prev is None or nxt is None:
        return [t[0]]
    return [t[0], t[1], t[2], prev[1], nxt[2]]
