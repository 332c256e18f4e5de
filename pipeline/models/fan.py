"""The frozen FAN backbone with the reference's feature taps, and strict weight loading.

Built from face-alignment's own modules (`face_alignment.models.fan`: FAN, ConvBlock, HourGlass)
so that face-alignment checkpoints load with identical parameter names. Only the first two
hourglass stacks exist: the features never need stacks 2 and 3 of a 4-stack 2DFAN4.

Taps (reference-implementation.md "Backbone"; for a 256x256 input every map is 64x64):
  F_l = conv4 output (256 ch, unmasked)
  H1  = bl0(relu(bn_end0(conv_last0(top_m_0(m0(F_l))))))          (256 ch, no ReLU after bl0)
  H2  = relu(bn_end1(conv_last1(top_m_1(m1(prev1)))))               (256 ch)
        with prev1 = F_l + H1 + al0(l0(.)), exactly face-alignment's FAN.forward
  heatmaps = l1(H2) (68 ch); A = heatmaps.sum(channels)
  feature  = concat(F_l, H1 * A, H2 * A)                            (768 ch)
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from face_alignment.models.fan import FAN

from pipeline.config import Backbone, FeaturesConfig
from pipeline.errors import UserError
from pipeline.hashing import file_sha256

N_STACKS = 2  # stacks built and run
N_LANDMARKS = 68
FEATURE_CHANNELS = 768
INPUT_SIZE = 256  # crops are 256x256 RGB in [0, 1]
FEATURE_STRIDE = 4  # 256 -> 64
FA_2DFAN4_KEY = "2DFAN-4"  # face-alignment's models_urls key for its released 2D FAN


class WeightsError(UserError, ValueError):
    """No usable backbone weights: missing file, wrong keys or shapes, no opt-in for random."""


class FrozenFAN(FAN):
    """Two hourglass stacks of face-alignment's FAN returning the 768-channel AU feature."""

    def __init__(self, backbone: Backbone = Backbone.FAN2):
        super().__init__(num_modules=N_STACKS)
        self.backbone = Backbone(backbone)
        # the reference's 2dfan2 pools its stem with max-pool; face-alignment's 2DFAN4 with avg-pool
        self._pool = F.max_pool2d if self.backbone is Backbone.FAN2 else F.avg_pool2d

    def taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All intermediate taps for x (B, 3, H, W) in [0, 1]."""
        x = F.relu(self.bn1(self.conv1(x)), True)  # (B, 64, H/2, W/2)
        x = self._pool(self.conv2(x), 2, stride=2)  # (B, 128, H/4, W/4)
        x = self.conv3(x)
        f_l = self.conv4(x)  # (B, 256, H/4, W/4)
        # stack 0
        ll = self.top_m_0(self.m0(f_l))
        ll = F.relu(self.bn_end0(self.conv_last0(ll)), True)
        heat0 = self.l0(ll)  # (B, 68, h, w)
        h1 = self.bl0(ll)  # (B, 256, h, w): H1 is the bl0 output, no ReLU
        # inter-stack path, as FAN.forward: previous + bl0(ll) + al0(l0(ll))
        previous = f_l + h1 + self.al0(heat0)
        # stack 1
        ll = self.top_m_1(self.m1(previous))
        h2 = F.relu(self.bn_end1(self.conv_last1(ll)), True)  # (B, 256, h, w)
        heat1 = self.l1(h2)  # (B, 68, h, w)
        attention = heat1.sum(dim=1, keepdim=True)  # (B, 1, h, w), plain sum
        return {"F_l": f_l, "H1": h1, "H2": h2, "heatmaps0": heat0, "heatmaps": heat1,
                "attention": attention}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.taps(x)
        a = t["attention"]
        return torch.cat([t["F_l"], t["H1"] * a, t["H2"] * a], dim=1)  # (B, 768, h, w)

    def freeze(self) -> "FrozenFAN":
        self.eval()
        self.requires_grad_(False)
        return self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> "FrozenFAN":
        # frozen: BatchNorm must always use its running statistics
        return super().train(False)


# -- checkpoints --------------------------------------------------------------------------------
_STACK_KEY = re.compile(r"^(m|top_m_|conv_last|bn_end|l|bl|al)(\d+)\.")


def _stack_of(key: str) -> tuple[str, int] | None:
    m = _STACK_KEY.match(key)
    return (m.group(1), int(m.group(2))) if m else None


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict, face-alignment's checkpoint, or {'state_dict': ...}; 'module.' stripped."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a FAN state dict (expected a mapping of parameter names "
                           f"to tensors, or a dict with 'state_dict'); got {type(obj).__name__}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def _list(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def state_dict_for_two_stacks(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Drop what a 2-stack model does not have: stacks >= 2 and the bl1/al1 bridge into stack 2."""
    kept, dropped = {}, []
    for k, v in state.items():
        s = _stack_of(k)
        if s is not None and (s[1] >= N_STACKS or (s[0] in ("bl", "al") and s[1] >= N_STACKS - 1)):
            dropped.append(k)
        else:
            kept[k] = v
    return kept, dropped


def load_state(model: FrozenFAN, state: dict[str, torch.Tensor], source: str) -> dict:
    """Load strictly; returns notes. Missing, unexpected or mis-shaped keys raise, listing them."""
    n_stacks = 1 + max((s[1] for k in state if (s := _stack_of(k)) and s[0] == "m"), default=-1)
    state, dropped = state_dict_for_two_stacks(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                        for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        lines = [f"{source}: checkpoint does not fit the 2-stack FAN"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_list(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_list(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {_list(mismatched)}")
        raise WeightsError("\n".join(lines))
    model.load_state_dict(state, strict=True)
    notes = {"checkpoint_stacks": n_stacks}
    if dropped:
        notes["dropped_keys"] = len(dropped)
        notes["note"] = (f"{n_stacks}-stack checkpoint: stacks >= {N_STACKS} and the bridge into "
                         f"stack {N_STACKS} ({len(dropped)} tensors) were dropped")
    return notes


def load_checkpoint_file(model: FrozenFAN, path: Path) -> tuple[str, dict]:
    """Load a local checkpoint strictly into `model`; returns (sha256, notes)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"FAN checkpoint not found: {path} (features.weights)")
    try:
        # weights_only: never unpickle arbitrary objects from a checkpoint file
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a usable checkpoint"
        raise WeightsError(f"{path}: cannot read as a torch checkpoint: {e}") from None
    notes = load_state(model, _unwrap(obj, path), str(path))
    return file_sha256(path), {"weights_path": str(path), **notes}


def _how_to_supply() -> str:
    from face_alignment.api import models_urls

    return ("supply pretrained FAN weights: set features.weights to a local checkpoint (a state "
            "dict, e.g. face-alignment's 2DFAN4 from "
            f"{models_urls[FA_2DFAN4_KEY]} with features.backbone: fan4, or the iBUG 2dfan2 with "
            "fan2), or set features.allow_download: true where there is internet (fan4 only); "
            "features.allow_random_weights: true runs an untrained backbone for tests and the "
            "demo only")


def weights_identity(cfg: FeaturesConfig) -> str:
    """The id of the weights `load_backbone` would load, without building the model.

    A local file: its SHA-256. face-alignment's download: the released file's name (it carries
    the file's hash). Random: "random-seed{N}". No weights configured: WeightsError.
    """
    if cfg.weights is not None:
        path = Path(cfg.weights)
        if not path.is_file():
            raise WeightsError(f"FAN checkpoint not found: {path} (features.weights)")
        return file_sha256(path)
    if cfg.allow_download:
        from face_alignment.api import models_urls

        return "download-" + Path(models_urls[FA_2DFAN4_KEY].split("?")[0]).stem
    if cfg.allow_random_weights:
        return f"random-seed{cfg.seed}"
    raise WeightsError("no FAN weights configured; " + _how_to_supply())


def load_backbone(cfg: FeaturesConfig) -> tuple[FrozenFAN, str, dict]:
    """Build the frozen backbone and load its weights: (model on CPU, weights_id, info).

    Order: a local checkpoint (cfg.weights); face-alignment's downloader (cfg.allow_download,
    2DFAN4 only); seeded random initialisation (cfg.allow_random_weights). Anything else is
    refused. The weights_id is the checkpoint's SHA-256, or "random-seed{N}". Callers print
    store.provenance.RANDOM_WEIGHTS_BANNER when info["random_weights"] (pipeline/ must not
    import store/); a warning is raised here too so no caller can miss it.
    """
    backbone = Backbone(cfg.backbone)
    model = FrozenFAN(backbone)
    info: dict[str, Any] = {"backbone": backbone.value, "random_weights": False}
    if cfg.weights is not None:
        weights_id, notes = load_checkpoint_file(model, Path(cfg.weights))
        info.update(notes, source="file")
    elif cfg.allow_download:
        if backbone is not Backbone.FAN4:
            raise WeightsError("the only downloadable FAN checkpoint is face-alignment's 2DFAN4 "
                               "(avg-pool stem): set features.backbone: fan4, or give "
                               "features.weights for fan2")
        from face_alignment.api import models_urls
        from face_alignment.utils import load_file_from_url

        try:
            path = Path(load_file_from_url(models_urls[FA_2DFAN4_KEY]))
        except Exception as e:  # noqa: BLE001 - network errors come in many types
            raise WeightsError(f"downloading {models_urls[FA_2DFAN4_KEY]} failed: {e}; "
                               + _how_to_supply()) from None
        _, notes = load_checkpoint_file(model, path)
        weights_id = weights_identity(cfg)
        info.update(notes, source="download", url=models_urls[FA_2DFAN4_KEY])
    elif cfg.allow_random_weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = FrozenFAN(backbone)
        weights_id = f"random-seed{cfg.seed}"
        info.update(source="random", random_weights=True, seed=cfg.seed)
        warnings.warn("untrained FAN backbone (features.allow_random_weights): features are "
                      "random projections, not AU features", stacklevel=2)
    else:
        raise WeightsError("no FAN weights configured; " + _how_to_supply())
    info["weights_id"] = weights_id
    return model.freeze(), weights_id, info
