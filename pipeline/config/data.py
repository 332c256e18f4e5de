"""The `dataset:` section: which layout, where its files are, how subjects fall into folds."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

from pydantic import Field, model_validator

from pipeline.aus import AUSet
from pipeline.config.base import Strict


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
    # subject metadata for results per group: a CSV with a `subject` column and any others
    # (sex, age band, ...); None: BP4D subject names give `sex` from their F/M prefix
    subjects: Optional[Path] = None

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

