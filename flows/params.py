"""Flow parameters: one pydantic model per flow, unknown keys rejected (Prefect validates
deployment parameters against these before a run starts)."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import Variant
from store.stage import Stage



class StageParams(BaseModel):
    """Parameters of every single-stage flow."""

    model_config = ConfigDict(extra="forbid")
    config: str = Field(description="YAML config path (relative paths: the worker's working directory)")
    overrides: dict[str, Any] = Field(default_factory=dict,
                                      description="dotted config keys, e.g. {'train.epochs': 2}")
    force: bool = Field(False, description="recompute even where outputs are up to date")

    def merged_overrides(self) -> dict[str, Any]:
        return dict(self.overrides)


class TrainParams(StageParams):
    variants: Optional[list[Variant]] = None  # default: the config's train.variants
    folds: Optional[list[int]] = None  # default: the config's train.folds, else every fold

    def selection(self) -> dict:
        return {"variants": [v.value for v in self.variants] if self.variants else None,
                "folds": list(self.folds) if self.folds else None}


class FullParams(TrainParams):
    """The full run; `stages` limits it to a sub-sequence (in pipeline order)."""

    stages: list[Stage] = Field(default_factory=lambda: list(Stage))

    def stage_names(self) -> list[str]:
        chosen = {s.value for s in self.stages}
        return [s.value for s in Stage if s.value in chosen]
