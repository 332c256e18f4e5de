"""`aunet predict`'s settings: a bundle on users' videos and images (docs/predict.md)."""
from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Optional

from pydantic import Field, field_validator

from pipeline.config.base import DaskConfig, Strict


class CropMode(str, Enum):
    ALIGNED = "aligned"  # this project's training crop: 5-point similarity onto the template
    REFERENCE = "reference"  # the reference's test crop: box-centred square, no rotation


class TemporalMode(str, Enum):
    CACHED = "cached"  # each frame's own crop and features; t +/- T from a bounded buffer
    EXACT = "exact"  # neighbours warped onto frame t's crop, as the reference does: 3 FAN passes


class Runtime(str, Enum):
    AUTO = "auto"  # ONNX Runtime where it imports and the device is the CPU, else torch
    TORCH = "torch"  # the FAN and the head in torch (any device, fp16 autocast on CUDA)
    ONNX = "onnx"  # both exported once per bundle and run by ONNX Runtime on the CPU


class FacesMode(str, Enum):
    LARGEST = "largest"  # one face per frame: the largest
    ALL = "all"  # every face, tracked across frames with a stable face_id


class OutputFormat(str, Enum):
    CSV = "csv"  # OpenFace 2.x layout
    PARQUET = "parquet"  # the same table as Parquet


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
    runtime: Runtime = Runtime.AUTO  # where the FAN and the head run (docs/predict.md)
    every: int = Field(1, ge=1)  # predict every Nth frame of a video (temporal neighbours stay true)
    dask: "DaskConfig" = DaskConfig()

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(PREDICT_DEVICE, v):
            raise ValueError(f"unknown device {v!r}: use auto, cpu, cuda, cuda:N or mps")
        return v

