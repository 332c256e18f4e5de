"""A run: one dataset through every stage, its sections and their cross-checks."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import model_validator

from pipeline.config.base import DaskConfig, Strict
from pipeline.config.data import DatasetConfig, Layout
from pipeline.config.faces import DetectorKind, FacesConfig
from pipeline.config.learning import EvalConfig, FeaturesConfig, PriorConfig, TrainConfig


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

