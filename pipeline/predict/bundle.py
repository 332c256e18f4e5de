"""Portable model bundles: everything `aunet predict` needs to run a trained model anywhere.

A bundle is a folder:

    model.json       what the model is (BundleSpec below): format version, variant, AUs in order,
                     thresholds, temporal offset T, crop mode and parameters, backbone and its
                     weights' SHA-256, detector, provenance (where and how it was trained, on
                     which subjects and folds, with which metrics), random_weights
    head.pt          the head's weights (this project's layout, or the reference's released one)
    fan.pth          the frozen FAN's weights (copied; absent for the random-weight opt-in)
    detector/        the face detector's weight files (copied)

Every file's SHA-256 is in model.json and checked when the bundle loads. model.json also holds
`spec_digest`, the SHA-256 of its own semantic fields (everything but `provenance`: thresholds, AU
order, crop, T, ...): a hand-edited model.json is refused until its owner accepts the edit on
purpose (`aunet models --accept-edit BUNDLE` re-signs it; tuned thresholds are a legitimate
edit). A bundle made from the randomly initialised backbone says so, and loading it needs an
explicit opt-in.
"""
from __future__ import annotations

import hashlib
import json
from enum import Enum
from pathlib import Path
from typing import Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.config import (Backbone, CropMode, FacesConfig, FeatureDtype, FeaturesConfig,
                             TemporalMode, Variant)
from pipeline.errors import UserError
from pipeline.faces.align import BOX_MARGIN, CROP_SIZE, EYE_DISTANCE
from pipeline.hashing import file_sha256

FORMAT, FORMAT_VERSION = "aunet-bundle", 1
SPEC_FILE, HEAD_FILE, FAN_FILE, DETECTOR_DIR = "model.json", "head.pt", "fan.pth", "detector"


class BundleError(UserError, ValueError):
    """Not a usable bundle: missing or changed files, another format, no random-weight opt-in."""


class HeadLayout(str, Enum):
    PROJECT = "project"  # our module names (StaticHead / TDNHead state dict)
    RELEASED = "released"  # the reference's released file, loaded by position


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CropSpec(Strict):
    mode: CropMode = CropMode.ALIGNED
    size: int = CROP_SIZE
    eye_distance: float = EYE_DISTANCE
    box_margin: float = BOX_MARGIN


class BackboneSpec(Strict):
    variant: Backbone = Backbone.FAN2
    sha256: Optional[str] = None  # of fan.pth; None for random weights
    random_seed: Optional[int] = None  # the random-weight opt-in: rebuilt from this seed


class DetectorSpec(Strict):
    faces: dict = Field(default_factory=dict)  # FacesConfig fields (weights paths bundle-relative)
    files: dict[str, str] = Field(default_factory=dict)  # role -> SHA-256 of detector/<file>


class BundleSpec(Strict):
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    name: str
    variant: Variant
    aus: list[str]
    thresholds: dict[str, float]
    temporal_offset: int = 10
    default_temporal: TemporalMode = TemporalMode.CACHED
    tta_flip: bool = False  # the reference averages logits with the horizontally flipped crop
    crop: CropSpec = CropSpec()
    backbone: BackboneSpec = BackboneSpec()
    head_layout: HeadLayout = HeadLayout.PROJECT
    head_sha256: str
    detector: DetectorSpec = DetectorSpec()
    random_weights: bool = False
    # how the head's training features were stored: predict gives a uint8-trained head its live
    # features quantised and dequantised the same way (pipeline.quantise.roundtrip)
    feature_dtype: FeatureDtype = FeatureDtype.FLOAT16
    provenance: dict = Field(default_factory=dict)
    spec_digest: Optional[str] = None  # semantic_digest(self), set when the bundle is written


UNSIGNED = {"provenance", "spec_digest"}  # fields outside the digest: a note, and itself


def semantic_digest(spec: BundleSpec) -> str:
    """SHA-256 of the fields that decide what the bundle computes (canonical JSON)."""
    fields = json.loads(spec.model_dump_json(exclude=UNSIGNED))
    if fields.get("feature_dtype") == FeatureDtype.FLOAT16.value:  # the digest of bundles made
        del fields["feature_dtype"]  # before the field existed stays theirs
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def signed(spec: BundleSpec) -> BundleSpec:
    """The spec with its digest, as it is written."""
    return spec.model_copy(update={"spec_digest": semantic_digest(spec)})


def read_spec(folder: Path, *, check_digest: bool = True) -> BundleSpec:
    path = Path(folder) / SPEC_FILE
    if not path.is_file():
        raise BundleError(f"{folder} is not a model bundle (no {SPEC_FILE}); make one with "
                          "`aunet export` or `aunet import-reference`")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: cannot read ({e})") from None
    if raw.get("format") != FORMAT or raw.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: format {raw.get('format')!r} version "
                          f"{raw.get('format_version')!r}; this version reads {FORMAT} "
                          f"{FORMAT_VERSION}")
    try:
        spec = BundleSpec.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        raise BundleError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    if check_digest and spec.spec_digest != semantic_digest(spec):
        what = ("records no digest of its settings (made before bundles did)" if spec.spec_digest
                is None else "was edited: its settings (thresholds, AUs, crop, ...) differ from "
                "those the bundle was made with")
        raise BundleError(f"{path} {what}; if you changed it on purpose, accept it with "
                          f"`aunet models --accept-edit {folder}`, else export or import the "
                          "bundle again")
    return spec


def verify_files(folder: Path, spec: BundleSpec) -> None:
    """Every file model.json records is there with its bytes (BundleError naming the first
    that is not)."""
    _check(folder, HEAD_FILE, spec.head_sha256)
    if spec.backbone.sha256 is not None:
        _check(folder, FAN_FILE, spec.backbone.sha256)
    detector_config(folder, spec)


def bundle_id(folder: Path) -> str:
    """A bundle's identity: the SHA-256 of its model.json (which holds every file's hash)."""
    return file_sha256(Path(folder) / SPEC_FILE)[:16]


def _check(folder: Path, name: str, sha: Optional[str]) -> Path:
    path = Path(folder) / name
    if not path.is_file():
        raise BundleError(f"bundle {folder}: {name} is missing")
    if sha is not None and file_sha256(path) != sha:
        raise BundleError(f"bundle {folder}: {name} does not hold the bytes model.json records "
                          "(changed or corrupt); export or import the bundle again")
    return path


def detector_config(folder: Path, spec: BundleSpec) -> FacesConfig:
    """The detector settings with the bundle's own weight files, each checked."""
    faces = dict(spec.detector.faces)
    for role, sha in spec.detector.files.items():
        key = {"weights": "detector_weights", "anchors": "detector_anchors"}.get(role)
        path = _check(folder, f"{DETECTOR_DIR}/{faces.get(f'{role}_file', role)}", sha)
        if key:
            faces[key] = path
    faces = {k: v for k, v in faces.items() if not k.endswith("_file")}
    return FacesConfig.model_validate(faces)


def load_backbone_of(folder: Path, spec: BundleSpec, allow_random_weights: bool):
    """(frozen FAN, weights id) of a bundle; random weights only with the explicit opt-in."""
    from pipeline.models.fan import load_backbone

    if spec.random_weights or spec.backbone.random_seed is not None:
        if not allow_random_weights:
            raise BundleError(f"bundle {folder} was made with the randomly initialised backbone "
                              "(tests and the demo only); pass --allow-random-weights to run it "
                              "anyway: its outputs then say so on every row")
        cfg = FeaturesConfig(backbone=spec.backbone.variant, allow_random_weights=True,
                             seed=spec.backbone.random_seed or 0)
    else:
        cfg = FeaturesConfig(backbone=spec.backbone.variant,
                             weights=_check(folder, FAN_FILE, spec.backbone.sha256))
    model, weights_id, _ = load_backbone(cfg)
    return model, weights_id


def load_head_of(folder: Path, spec: BundleSpec) -> torch.nn.Module:
    from pipeline.models.heads import build_head
    from pipeline.models.reference import load_released_file

    path = _check(folder, HEAD_FILE, spec.head_sha256)
    if spec.head_layout is HeadLayout.RELEASED:
        head = load_released_file(path, len(spec.aus))
    else:
        head = build_head(spec.variant, len(spec.aus))
        head.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return head.eval()
