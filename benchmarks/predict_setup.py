"""What the predict benchmarks share: the shared media, an untrained bundle, one predict run."""
from __future__ import annotations

from pathlib import Path

from pipeline.aus import AUSet
from pipeline.config import FacesConfig, PredictConfig, TemporalMode, Variant

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VIDEO = SHARED / "media" / "videos" / "single_face.mp4"
BLAZE = SHARED / "weights" / "blazeface" / "blazeface.pth"


def make_bundle(folder: Path, crop: int, variant: Variant) -> Path:
    from stages.bundles import untrained

    return untrained(folder, variant, AUSet.BP4D.columns, crop_size=crop,
                     detector=FacesConfig(detector_weights=BLAZE))


def config(bundle: Path, video: Path, out: Path, temporal: str, **extra) -> PredictConfig:
    return PredictConfig(inputs=(video,), model=bundle, out=out, temporal=TemporalMode(temporal),
                         allow_random_weights=True, device="cpu", **extra)


def predict_once(bundle: Path, video: Path, out: Path, temporal: str, **extra) -> dict:
    from stages import predict

    s = predict.run(config(bundle, video, out, temporal, **extra), progress=False)
    assert not s["failed"], s["failed"]
    return s["results"][0]
