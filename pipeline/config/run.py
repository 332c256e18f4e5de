"""A run: one dataset through every stage, its sections and their cross-checks."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

from pydantic import field_validator, model_validator

from pipeline.config.base import DaskConfig, Strict
from pipeline.config.data import DatasetConfig, Layout
from pipeline.config.faces import DetectorKind, FacesConfig
from pipeline.config.learning import EvalConfig, FeaturesConfig, PriorConfig, TrainConfig


def is_store_url(v: Any) -> bool:
    """An fsspec URL of a non-local filesystem (`s3://...`): never resolved as a folder."""
    scheme, sep, _ = str(v).partition("://")
    return isinstance(v, str) and bool(sep) and scheme.isidentifier() and scheme != "file"


class RunConfig(Strict):
    dataset: DatasetConfig
    # a folder, or an object-store URL (`s3://bucket/prefix`, kept as text: store/location.py)
    store: Union[Path, str] = Path("artifacts")
    faces: FacesConfig = FacesConfig()
    features: FeaturesConfig = FeaturesConfig()
    prior: PriorConfig = PriorConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    dask: DaskConfig = DaskConfig()

    @field_validator("store", mode="before")
    @classmethod
    def _store(cls, v: Any) -> Any:
        return v if is_store_url(v) else Path(v)

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        if self.dataset.layout is Layout.DEMO and self.faces.detector is not DetectorKind.PROVIDED:
            raise ValueError("the demo dataset ships landmarks: faces.detector must be 'provided'")
        return self

    def section(self, name: str) -> dict[str, Any]:
        return json.loads(getattr(self, name).model_dump_json())

