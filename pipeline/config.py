"""Configuration: one pydantic model per stage, all defaults here, unknown keys rejected.

A run is described by a `RunConfig` loaded from a YAML file under `configs/`. Relative paths in
the YAML are resolved against the YAML file's folder, so a config can travel with its data.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.aus import DECISION_THRESHOLD, AUSet
from pipeline.errors import ConfigError
from pipeline.faces.align import BOX_MARGIN, CROP_SIZE, EYE_DISTANCE


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class Layout(str, Enum):
    BP4D = "bp4d"  # AUCoding/AU_OCC/{subject}_{task}.csv + {subject}/{task}/{frame}.jpg
    DISFA = "disfa"  # ActionUnit_Labels/{SN}/{SN}_au{N}.txt + videos or extracted frames
    AFFWILD2 = "affwild2"  # ABAW Train_Set/ Validation_Set/ text files + cropped_aligned/
    LIST = "list"  # community list format: image paths file + label matrix file
    MANIFEST = "manifest"  # a user's CSV or Parquet table (images or videos, labels optional)
    DEMO = "demo"  # the synthetic dataset the project generates itself
    MIX = "mix"  # several datasets trained together (`members`: their configs); no files of its own


class FoldScheme(str, Enum):
    STANDARD = "standard"  # built-in subject lists (BP4D, DISFA)
    KFOLD = "kfold"  # subject-exclusive, frame-balanced, seeded by fold_seed (pipeline/folds.py)
    COLUMN = "column"  # a `fold` column given by the layout (ABAW split, user manifests)


class OnBadInput(str, Enum):
    RAISE = "raise"  # stop with an error naming the file and line
    SKIP = "skip"  # leave the row out, counted by reason in the manifest's report


class DatasetConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_\-+]+$")
    layout: Layout
    root: Optional[Path] = None  # required by every layout but `mix`
    au_set: AUSet
    folds: FoldScheme = FoldScheme.STANDARD
    n_folds: int = Field(3, ge=2)
    # folds: kfold: the seed of the subjects' order (pipeline/folds.py); a different seed gives
    # different folds, the same seed the same folds on any machine and numpy version
    fold_seed: int = 0
    on_bad_input: OnBadInput = OnBadInput.RAISE
    # DISFA: occurrence = intensity >= threshold (paper and community: 2).
    occurrence_threshold: int = Field(2, ge=1, le=5)
    # DISFA: "video" reads Videos_LeftCamera/LeftVideo{SN}_comp.avi; "frames" reads {SN}/{i}.png.
    disfa_source: str = Field("video", pattern="^(video|frames)$")
    frames_dir: Optional[Path] = None  # BP4D / DISFA frames / Aff-Wild2 cropped_aligned root
    image_ext: str = "jpg"
    list_paths: Optional[Path] = None  # LIST layout: image paths, one per line
    list_labels: Optional[Path] = None  # LIST layout: row-aligned 0/1 labels
    manifest_file: Optional[Path] = None  # MANIFEST layout: CSV or Parquet
    # DEMO layout: size of the generated dataset.
    demo_subjects: int = Field(6, ge=3)
    demo_frames_per_subject: int = Field(40, ge=12)
    demo_seed: int = 0
    # MIX layout: the member datasets' configs (their manifests, crop and feature stores are
    # used as they are: run each member's pipeline first), and the share of each member in a
    # training epoch by dataset name (default: proportional to its frames)
    members: tuple[Path, ...] = ()
    member_weights: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _layout_needs(self) -> "DatasetConfig":
        if self.layout is Layout.MIX:
            if len(self.members) < 2:
                raise ValueError("layout 'mix' needs at least two `members` (their config files)")
        elif self.root is None:
            raise ValueError(f"layout '{self.layout.value}' needs `root` (the dataset's folder)")
        if any(w < 0 for w in self.member_weights.values()):
            raise ValueError("member_weights must be >= 0")
        return self


class DetectorKind(str, Enum):
    BLAZEFACE = "blazeface"
    BLAZEFACE_BACK = "blazeface_back"
    SFD = "sfd"
    RETINAFACE = "retinaface"  # RetinaFace MobileNet-0.25 (pipeline/faces/retinaface.py); weights by path
    PROVIDED = "provided"  # use the manifest's landmarks / boxes; no detector runs


class FaceRule(str, Enum):
    LARGEST = "largest"  # the largest box (ties: highest score)
    TRACK = "track"  # in videos, the box closest to the previous frame's face; else largest


class TilePyramid(str, Enum):
    OFF = "off"  # BlazeFace sees squares of the short side only
    FALLBACK = "fallback"  # finer tiles only on frames where those found no face
    ALWAYS = "always"  # finer tiles on every frame (every small face; ~10x the time on video)


class TemporalRule(str, Enum):
    NONE = "none"  # every frame on its own
    PERSIST = "persist"  # video rows: a face must overlap faces on neighbouring rows (see docs)


class FacesConfig(Strict):
    detector: DetectorKind = DetectorKind.BLAZEFACE
    detector_weights: Optional[Path] = None  # None: face-alignment's own downloader
    detector_anchors: Optional[Path] = None
    # None: the detector's own measured default (pipeline.faces.factory.DEFAULT_MIN_SCORE).
    min_score: Optional[float] = Field(None, ge=0, le=1)
    # BlazeFace small faces: tiles of 1/2 (level 2), 1/4 (3), 1/8 (4) of the short side too, their
    # faces confirmed by both BlazeFace models (pipeline/faces/blazeface.py).
    tile_pyramid: TilePyramid = TilePyramid.FALLBACK
    tile_levels: int = Field(2, ge=1, le=4)
    temporal: TemporalRule = TemporalRule.NONE
    persist_frames: int = Field(3, ge=2, le=30)  # temporal=persist: the shortest run kept
    rule: FaceRule = FaceRule.TRACK
    size: int = Field(CROP_SIZE, gt=0)  # crop side (pixels)
    # Template eye distance as a fraction of the crop width; smaller = more margin around the face.
    eye_distance: float = Field(EYE_DISTANCE, gt=0.05, lt=0.8)
    min_face_px: int = Field(24, ge=1)  # faces smaller than this (box side) are not kept
    # Box-only crops (SFD, manifest boxes without landmarks): a square around the box grown by
    # this fraction of its side on every edge.
    box_margin: float = Field(BOX_MARGIN, ge=0, le=2)
    # Keypoint detectors: faces whose eye line is tilted more than this are dropped as false
    # positives (BlazeFace fires on clouds and lettering with |roll| > 60 deg); 180 = keep all.
    max_roll_deg: float = Field(45.0, gt=0, le=180)
    chunk_frames: int = Field(64, ge=1)  # crops per Zarr chunk block / per resumable unit

    @field_validator("tile_pyramid", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        """YAML reads a bare `off` as False: take it as the word the user wrote."""
        return TilePyramid.OFF if v is False else v


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


class EvalConfig(Strict):
    threshold: float = Field(DECISION_THRESHOLD, gt=0, lt=1)  # on sigmoid outputs: 0 or 1 would score nothing
    bootstrap: int = Field(1000, ge=0)
    seed: int = 0
    cross_datasets: tuple[str, ...] = ()  # other datasets' names to score these models on
    timeline_video: Optional[str] = None  # report: which video's timeline to plot


class CropMode(str, Enum):
    ALIGNED = "aligned"  # this project's training crop: 5-point similarity onto the template
    REFERENCE = "reference"  # the reference's test crop: box-centred square, no rotation


class TemporalMode(str, Enum):
    CACHED = "cached"  # each frame's own crop and features; t +/- T from a bounded buffer
    EXACT = "exact"  # neighbours warped onto frame t's crop, as the reference does: 3 FAN passes


class FacesMode(str, Enum):
    LARGEST = "largest"  # one face per frame: the largest
    ALL = "all"  # every face, tracked across frames with a stable face_id


class OutputFormat(str, Enum):
    CSV = "csv"  # OpenFace 2.x layout
    PARQUET = "parquet"  # the same table as Parquet


class DaskConfig(Strict):
    address: Optional[str] = None  # an existing scheduler; None: a local cluster
    n_workers: int = 1
    # One task at a time per worker: torch's own threads use the cores inside a task.
    threads_per_worker: int = 1
    # the local cluster's dashboard; loopback unless you choose to expose it
    dashboard_address: str = "127.0.0.1:8787"


PREDICT_DEVICE = r"auto|cpu|cuda(:\d+)?|mps"


class PredictConfig(Strict):
    """`aunet predict`: a bundle on users' videos and images (docs/predict.md)."""

    inputs: tuple[Path, ...]
    model: Path  # a bundle folder
    out: Path
    format: OutputFormat = OutputFormat.CSV
    faces: FacesMode = FacesMode.LARGEST
    temporal: Optional[TemporalMode] = None  # None: the bundle's default
    tta_flip: Optional[bool] = None  # None: the bundle's default
    sequence: bool = False  # images of a folder are the frames of one video, in name order
    fps: float = Field(30.0, gt=0)  # frame rate of image sequences (videos carry their own)
    save_aligned: bool = False
    render: bool = False  # also write an annotated video
    skip_existing: bool = False
    allow_random_weights: bool = False
    batch_size: int = Field(8, ge=1)
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps (PREDICT_DEVICE)
    min_face_px: int = Field(24, ge=1)
    dask: "DaskConfig" = DaskConfig()

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(PREDICT_DEVICE, v):
            raise ValueError(f"unknown device {v!r}: use auto, cpu, cuda, cuda:N or mps")
        return v


class RunConfig(Strict):
    dataset: DatasetConfig
    store: Path = Path("artifacts")
    faces: FacesConfig = FacesConfig()
    features: FeaturesConfig = FeaturesConfig()
    prior: PriorConfig = PriorConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    dask: DaskConfig = DaskConfig()

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        if self.dataset.layout is Layout.DEMO and self.faces.detector is not DetectorKind.PROVIDED:
            raise ValueError("the demo dataset ships landmarks: faces.detector must be 'provided'")
        return self

    def section(self, name: str) -> dict[str, Any]:
        return json.loads(getattr(self, name).model_dump_json())


def _resolve_paths(data: Any, base: Path) -> Any:
    """Resolve relative path-valued keys against the config file's folder."""
    path_keys = {"root", "store", "frames_dir", "list_paths", "list_labels", "manifest_file",
                 "weights", "detector_weights", "detector_anchors", "init_from", "members"}
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            if k in path_keys and isinstance(v, list):
                out[k] = [str((base / p).resolve()) if isinstance(p, str) and not Path(p).is_absolute()
                          else p for p in v]
            elif k in path_keys and isinstance(v, str) and not Path(v).is_absolute():
                out[k] = str((base / v).resolve())
            else:
                out[k] = _resolve_paths(v, base)
        return out
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last one
    silently, e.g. a second `train:` section replacing the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key '{key}' is given twice "
                                  "in the same section; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_override(pair: str) -> tuple[str, Any]:
    """`key.sub=value` (value in YAML syntax) -> (dotted key, value); ConfigError when unusable."""
    if "=" not in pair:
        raise ConfigError(f"--set expects key=value, got {pair!r}")
    key, text = pair.split("=", 1)
    try:
        return key.strip(), yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        where = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"--set {pair!r}: the value is not valid YAML ({where})") from None


def _apply(data: dict, dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for i, p in enumerate(parents):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{'.'.join(parents[:i + 1])}' is a value, not a "
                              "section; give the full key, e.g. --set train.epochs=2")
    node[leaf] = value


def load_config(path: str | Path, overrides: Optional[dict[str, Any]] = None) -> RunConfig:
    """Load a YAML config; errors name the file and the offending key."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--config {path} is a folder; give a YAML file, e.g. configs/demo.yaml")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the config: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections (dataset:, faces:, ...)")
    data = _resolve_paths(data, path.parent.resolve())
    for dotted, value in (overrides or {}).items():
        _apply(data, dotted, value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        lines = [f"{path}: invalid config"]
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def member_configs(cfg: RunConfig) -> list[RunConfig]:
    """A mix's member configs (`dataset.members`), each parsed once per version of its file (a
    long-lived Dask worker serving several runs sees an edited member config); [] otherwise."""
    return [_load_version(str(p), _file_version(Path(p))) for p in cfg.dataset.members]


def _file_version(path: Path) -> tuple | None:
    try:
        st = path.stat()
        return (st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:  # load_config says what is wrong with the path
        return None


@lru_cache(maxsize=16)
def _load_version(path: str, version: tuple | None) -> RunConfig:
    return load_config(path)
