"""The pipeline's stages, in order: the one list the catalog, the runner and the flows use
(kept free of heavy imports: the command line reads it at start-up)."""
from __future__ import annotations

from enum import Enum


class Stage(str, Enum):
    """The pipeline's stages, in the order they run: the one list every layer uses."""
    MANIFEST = "manifest"
    FACES = "faces"
    FEATURES = "features"
    PRIOR = "prior"
    TRAIN = "train"
    EVALUATE = "evaluate"
    REPORT = "report"

    @property
    def folder(self) -> str | None:
        """Its artifacts' folder under `{dataset}/` (None: the report renders under reports/)."""
        return _FOLDERS.get(self)


_FOLDERS = {Stage.MANIFEST: "manifest", Stage.FACES: "faces", Stage.FEATURES: "features",
            Stage.PRIOR: "prior", Stage.TRAIN: "models", Stage.EVALUATE: "eval"}
