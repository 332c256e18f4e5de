"""RetinaFace with a MobileNet-0.25 body, written here in plain torch (no torchvision).

It loads the widely used `mobilenet0.25_Final.pth` release (MIT) strictly: module names below
mirror that checkpoint's keys (`body.stage1.0.0.weight`, `fpn.output1.0.weight`,
`ssh1.conv3X3.0.weight`, `ClassHead.0.conv1x1.weight`, ...). Architecture:

    BGR - mean (N, 3, H, W)
      -> MobileNetV1 x0.25: stage1 (64 ch, stride 8), stage2 (128, /16), stage3 (256, /32)
      -> FPN: 1x1 to 64 ch each, top-down nearest upsampling + add, 3x3 merge
      -> SSH context module per level (3x3 | 5x5 | 7x7 branches, 32 + 16 + 16 = 64 ch)
      -> per level heads, 2 anchors per cell: class (2), box (4), landmarks (10)
    priors: min sizes (16, 32) at stride 8, (64, 128) at /16, (256, 512) at /32; SSD-style
    decoding with variances (0.1, 0.2).

The 5 landmarks come out image-left eye, image-right eye, nose, image-left mouth corner,
image-right mouth corner: the project's order (checked on the shared media in the tests).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.faces.geometry import nms, plausible
from pipeline.faces.types import Detections, Detector, DetectorError
from pipeline.config import FacesConfig

MEAN_BGR = (104.0, 117.0, 123.0)  # the release's training mean, subtracted from BGR pixels
MIN_SIZES = ((16, 32), (64, 128), (256, 512))  # anchor sides (input pixels) per level
STEPS = (8, 16, 32)  # level strides
VARIANCES = (0.1, 0.2)  # centre / size scaling of the box regression
NMS_IOU = 0.4  # the release's own test-time suppression threshold
LEAKY = 0.1  # negative slope of every LeakyReLU in the x0.25 model (64-channel FPN / SSH)
# Inference size: the long side is scaled down to at most this many pixels (never up), so a
# 2560x1912 photo costs what a 960x717 frame does. The smallest anchor is 16 px, so at this cap
# the smallest face the network can report is ~16/717 = 2.2% of the short side of a 4:3 photo
# (3% of 16:9): well under the 10% asked for.
MAX_SIDE = 960
MAX_BATCH = 8  # frames per forward pass (bounded memory: ~0.4 GB at 960x540)


def _conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    """conv (no bias) -> batch norm [-> LeakyReLU]: indices 0, 1 [, 2] as in the checkpoint."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.LeakyReLU(LEAKY, inplace=True))
    return nn.Sequential(*layers)


def _conv_dw(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 (0, 1, 2) then pointwise 1x1 (3, 4, 5), each with BN + LeakyReLU."""
    return nn.Sequential(*_conv_bn(cin, cin, stride, groups=cin), *_conv_bn(cin, cout, kernel=1))


class MobileNetV1(nn.Module):
    """x0.25 body; returns stage1 (N, 64, H/8, W/8), stage2 (N, 128, /16), stage3 (N, 256, /32)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(_conv_bn(3, 8, 2), _conv_dw(8, 16, 1), _conv_dw(16, 32, 2),
                                    _conv_dw(32, 32, 1), _conv_dw(32, 64, 2), _conv_dw(64, 64, 1))
        self.stage2 = nn.Sequential(_conv_dw(64, 128, 2), *[_conv_dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(_conv_dw(128, 256, 2), _conv_dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class FPN(nn.Module):
    def __init__(self, cins: Sequence[int] = (64, 128, 256), cout: int = 64):
        super().__init__()
        self.output1, self.output2, self.output3 = (_conv_bn(c, cout, kernel=1) for c in cins)
        self.merge1, self.merge2 = _conv_bn(cout, cout), _conv_bn(cout, cout)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        o1, o2, o3 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[2:], mode="nearest"))
        return [o1, o2, o3]


class SSH(nn.Module):
    """Context module: a 3x3 branch (half the channels) and stacked 3x3s seeing 5x5 and 7x7."""

    def __init__(self, cin: int = 64, cout: int = 64):
        super().__init__()
        self.conv3X3 = _conv_bn(cin, cout // 2, act=False)
        self.conv5X5_1 = _conv_bn(cin, cout // 4)
        self.conv5X5_2 = _conv_bn(cout // 4, cout // 4, act=False)
        self.conv7X7_2 = _conv_bn(cout // 4, cout // 4)
        self.conv7x7_3 = _conv_bn(cout // 4, cout // 4, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c5_1 = self.conv5X5_1(x)
        c7 = self.conv7x7_3(self.conv7X7_2(c5_1))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(c5_1), c7], dim=1))


class _Head(nn.Module):
    """1x1 conv -> (N, H*W*anchors, values): cells row-major, anchors within a cell."""

    def __init__(self, values: int, cin: int = 64, anchors: int = 2):
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(cin, anchors * values, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1x1(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.values)


class RetinaFaceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.fpn = MobileNetV1(), FPN()
        self.ssh1, self.ssh2, self.ssh3 = SSH(), SSH(), SSH()
        self.ClassHead = nn.ModuleList(_Head(2) for _ in STEPS)
        self.BboxHead = nn.ModuleList(_Head(4) for _ in STEPS)
        self.LandmarkHead = nn.ModuleList(_Head(10) for _ in STEPS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) BGR - mean -> box deltas (N, P, 4), face prob (N, P), landmark deltas (N, P, 10)."""
        levels = self.fpn(self.body(x))
        levels = [self.ssh1(levels[0]), self.ssh2(levels[1]), self.ssh3(levels[2])]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, levels)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, levels)], dim=1)
        ldm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, levels)], dim=1)
        return loc, conf.softmax(-1)[..., 1], ldm


@lru_cache(maxsize=8)
def priors(h: int, w: int) -> np.ndarray:
    """(P, 3) anchors for an (h, w) input: centre x, centre y, side, all in input pixels, in the
    heads' order (level, then cell row-major, then the level's two sizes)."""
    out = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        fh, fw = -(-h // step), -(-w // step)  # ceil: the stride-2 3x3 convs round up
        cy, cx = np.meshgrid((np.arange(fh) + 0.5) * step, (np.arange(fw) + 0.5) * step, indexing="ij")
        grid = np.broadcast_to(np.stack([cx, cy], -1)[:, :, None], (fh, fw, len(sizes), 2))
        side = np.broadcast_to(np.asarray(sizes, np.float64)[None, None, :, None], (fh, fw, len(sizes), 1))
        out.append(np.concatenate([grid, side], -1).reshape(-1, 3))
    return np.concatenate(out)


def decode(loc: np.ndarray, ldm: np.ndarray, pri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deltas (P, 4), (P, 10) at anchors (P, 3) -> boxes (P, 4) x0 y0 x1 y1, landmarks (P, 5, 2)."""
    centre, side = pri[:, None, :2], pri[:, None, 2:]  # (P, 1, 2), (P, 1, 1)
    c = centre[:, 0] + loc[:, :2] * VARIANCES[0] * side[:, 0]
    wh = side[:, 0] * np.exp(loc[:, 2:] * VARIANCES[1])
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1)
    points = centre + ldm.reshape(-1, 5, 2) * VARIANCES[0] * side
    return boxes, points


def load_net(path: Path) -> RetinaFaceNet:
    """The network with `path`'s weights, strictly; DetectorError naming the file otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}  # saved under DataParallel
        net = RetinaFaceNet()
        net.load_state_dict(state, strict=True)
    except Exception as e:  # missing, truncated, pickled code, other model: say which file
        raise DetectorError(f"{path}: not RetinaFace MobileNet-0.25 weights "
                            f"(mobilenet0.25_Final.pth) ({type(e).__name__}: {e})") from None
    return net.eval()


class RetinaFace(Detector):
    """RetinaFace MobileNet-0.25 at a long side of at most `MAX_SIDE`; same-size frames batched."""

    def __init__(self, cfg: FacesConfig, files: dict[str, Path], min_score: float):
        super().__init__(cfg, files, min_score)
        self.net = load_net(files["weights"])

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[Detections]:
        import cv2

        out: list[Detections] = [Detections.empty()] * len(images)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            by_shape.setdefault(img.shape[:2], []).append(i)
        for (h, w), idx in by_shape.items():
            scale = min(1.0, MAX_SIDE / max(h, w))
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            pri = priors(nh, nw)
            for s in range(0, len(idx), MAX_BATCH):
                part = idx[s:s + MAX_BATCH]
                x = np.stack([images[i] if scale == 1.0 else
                              cv2.resize(images[i], (nw, nh), interpolation=cv2.INTER_AREA)
                              for i in part])  # (B, nh, nw, 3) RGB uint8
                x = torch.from_numpy(x[..., ::-1].astype(np.float32) - np.float32(MEAN_BGR))
                with torch.inference_mode():
                    loc, prob, ldm = self.net(x.permute(0, 3, 1, 2).contiguous())
                for b, i in enumerate(part):
                    out[i] = plausible(self._select(loc[b].numpy(), prob[b].numpy(), ldm[b].numpy(),
                                                    pri, np.array([w / nw, h / nh])), self.max_roll_deg)
        return out

    def _select(self, loc: np.ndarray, prob: np.ndarray, ldm: np.ndarray, pri: np.ndarray,
                to_source: np.ndarray) -> Detections:
        """Anchors above min_score, decoded, suppressed, in source pixels."""
        keep = np.flatnonzero(prob > self.min_score)
        if keep.size == 0:
            return Detections.empty()
        boxes, points = decode(loc[keep].astype(np.float64), ldm[keep].astype(np.float64), pri[keep])
        boxes, points = boxes * np.tile(to_source, 2), points * to_source
        k = nms(boxes, prob[keep], NMS_IOU)
        return Detections(boxes[k].astype(np.float32), points[k].astype(np.float32),
                          prob[keep][k].astype(np.float32))
