"""Flow parameters: one pydantic model per flow, unknown keys rejected (Prefect validates
deployment parameters against these before a run starts)."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import Variant


class StageParams(BaseModel):
    """Parameters of every single-stage flow."""

    model_config = ConfigDict(extra="forbid")
    config: str = Field(description="YAML config path (relative paths: the worker's working directory)")
    overrides: dict[str, Any] = Field(default_factory=dict,
                                      description="dotted config keys, e.g. {'train.epochs': 2}")
    force: bool = Field(False, description="recompute even where outputs are up to date")


class TrainParams(StageParams):
    variants: Optional[list[Variant]] = None  # default: the config's train.variants
    folds: Optional[list[int]] = None  # default: every fold

    def merged_overrides(self) -> dict[str, Any]:
        out = dict(self.overrides)
        if self.variants:
            out["train.variants"] = [v.value for v in self.variants]
        if self.folds:
            out["train.folds"] = list(self.folds)
        return out


STAGE_ORDER = ("manifest", "faces", "features", "prior", "train", "evaluate", "report")


class FullParams(TrainParams):
    """The full run; `stages` limits it to a sub-sequence (in pipeline order)."""

    stages: list[str] = Field(default_factory=lambda: list(STAGE_ORDER))
