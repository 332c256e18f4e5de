"""The `features:`, `prior:`, `train:` and `eval:` sections: the frozen backbone, the label prior,
the heads and their evaluation."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

from pydantic import Field, field_validator

from pipeline.aus import DECISION_THRESHOLD, AUSet
from pipeline.config.base import Strict


class Backbone(str, Enum):
    FAN2 = "fan2"  # 2-stack, max-pool stem (the reference's iBUG "2dfan2")
    FAN4 = "fan4"  # face-alignment's 2DFAN4: avg-pool stem, only the first two stacks are run


class Device(str, Enum):
    AUTO = "auto"  # CUDA when torch sees a GPU, else the CPU
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"  # Apple silicon


class FeatureDtype(str, Enum):
    """How feature values are stored (docs/features.md "uint8")."""
    FLOAT16 = "float16"
    FLOAT32 = "float32"
    UINT8 = "uint8"  # per frame, per channel scale and offset (pipeline.quantise)


class FeaturesConfig(Strict):
    backbone: Backbone = Backbone.FAN2
    weights: Optional[Path] = None
    allow_download: bool = False  # use face-alignment's downloader (needs internet)
    allow_random_weights: bool = False  # tests and the demo only: loudly marked everywhere
    seed: int = 0
    dtype: FeatureDtype = FeatureDtype.FLOAT16
    batch_size: int = Field(8, ge=1)
    device: Device = Device.AUTO
    frames_per_shard: int = Field(32, ge=1)
    codec: str = Field("blosc-lz4", pattern="^(blosc-lz4|blosc-zstd|zstd|none)$")


class Variant(str, Enum):
    AU_FAN = "au_fan"
    AU_VAE = "au_vae"
    AU_TDN = "au_tdn"
    AUNET = "aunet"

    @property
    def temporal(self) -> bool:
        return self in (Variant.AU_TDN, Variant.AUNET)

    @property
    def uses_prior(self) -> bool:
        return self in (Variant.AU_VAE, Variant.AUNET)


class ConsistencyForm(str, Enum):
    PAPER = "paper"  # ||mu_p - mu_g||^2 + ||Sigma_p - Sigma_g||^2, Sigma the variance exp(logvar)
    CODE = "code"  # reference code: mse(mu_p, mu_g) + mean(sigma_p), sigma = exp(0.5 logvar)


LATENT_DIMS = {AUSet.BP4D: 8, AUSet.DISFA: 6, AUSet.ABAW12: 5, AUSet.AFFWILD2_PAPER: 5,
               AUSet.UNION15: 8}


class PriorConfig(Strict):
    latent_dim: Optional[int] = Field(None, ge=1)  # None: the paper's k for the dataset's AU set
    lambdas: tuple[float, ...] = (0.1, 0.2, 0.3)
    noise: float = Field(0.2, ge=0, lt=1)  # label corruption U(-noise, noise)
    epochs: int = Field(100, ge=1)
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    batch_size: int = Field(128, ge=1)
    holdout_fraction: float = Field(0.2, gt=0, lt=0.9)  # of training subjects, for lambda
    seed: int = 0

    @field_validator("lambdas")
    @classmethod
    def _lambdas(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not (0 <= x < float("inf")) for x in v):  # the comparison fails for NaN
            raise ValueError("give at least one lambda, each a number >= 0")
        return v

    def k(self, au_set: AUSet) -> int:
        return self.latent_dim or LATENT_DIMS[au_set]


class TrainConfig(Strict):
    variants: tuple[Variant, ...] = tuple(Variant)
    folds: Optional[tuple[int, ...]] = None  # None: every fold
    epochs: int = Field(12, ge=1)
    lr: float = Field(1e-4, gt=0, allow_inf_nan=False)
    lr_step_epochs: int = Field(4, ge=1)
    lr_gamma: float = Field(0.3, gt=0, allow_inf_nan=False)
    # The reference trains heads with AdamW(weight_decay=0) (train_video_vae.py), not torch's
    # 1e-2 default; changing it changes the trained numbers.
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    batch_size: int = Field(64, ge=1)
    max_steps_per_epoch: Optional[int] = Field(None, ge=1)  # demo / smoke runs
    temporal_offset: int = Field(10, ge=0)  # T (0: the neighbours are the frame itself)
    consistency: ConsistencyForm = ConsistencyForm.PAPER
    consistency_weight: float = Field(1.0, ge=0, allow_inf_nan=False)  # gamma
    feature_shift: int = Field(2, ge=0)  # max random spatial shift (feature cells) as augmentation; 0 = off
    shuffle_buffer: int = Field(256, ge=1)
    # the config (YAML path) whose final heads of the same variant and fold initialise these
    # (the paper starts DISFA heads from BP4D heads); its heads are found from its fingerprints
    init_from: Optional[Path] = None
    seed: int = 0


class ThresholdChoice(str, Enum):
    FIXED = "fixed"  # every AU at eval.threshold (the paper's protocol, for paper tables)
    # per AU, the best-F1 threshold on a held-out, subject-exclusive part of each training fold
    # (eval.validation_fraction of its subjects, seeded): heads are trained without that part
    VALIDATION = "validation"


class EvalConfig(Strict):
    threshold: float = Field(DECISION_THRESHOLD, gt=0, lt=1)  # on sigmoid outputs: 0 or 1 would score nothing
    threshold_choice: ThresholdChoice = ThresholdChoice.FIXED
    validation_fraction: float = Field(0.2, gt=0, lt=1)  # of each training fold's subjects
    validation_seed: int = 0  # the held-out subjects' order (pipeline.folds.validation_subjects)
    bootstrap: int = Field(1000, ge=0)
    permutations: int = Field(1000, ge=0)  # groups: permutations of the subjects' group labels
    seed: int = 0
    cross_datasets: tuple[str, ...] = ()  # other datasets' names to score these models on
    timeline_video: Optional[str] = None  # report: which video's timeline to plot

