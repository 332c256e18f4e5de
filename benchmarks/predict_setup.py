"""What the predict benchmarks share: the shared media, an untrained bundle, one predict run."""
from __future__ import annotations

import json
import subprocess
import sys
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


def in_fresh_process(code: str, what: str):
    """The JSON value on the last line `code` prints, run in a fresh Python process with this
    one's import path (a measurement free of this process's threads, arenas and allocations);
    SystemExit with the child's error output where it fails."""
    cp = subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = {sys.path!r}\n" + code],
                        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if cp.returncode:
        raise SystemExit(f"{what}: the child run failed:\n{cp.stderr[-3000:]}")
    return json.loads(cp.stdout.strip().splitlines()[-1])
