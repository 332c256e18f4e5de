"""Where a detector's weight files come from: given paths, or face-alignment's downloader.

`resolve_weights` may download (the faces stage and export call it before running a detector);
`identity_files` never does: it names each file by what is on disk or by its download address,
so computing an artifact's identity or path needs no network.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pipeline.config import DetectorKind, FacesConfig, TilePyramid
from pipeline.faces.types import DetectorError


def _download_urls(kind: DetectorKind) -> dict[str, str]:
    """face-alignment's own download addresses for the detector's files ({}: none we can use)."""
    if kind is DetectorKind.RETINAFACE:
        return {}  # face-alignment's RetinaFace wrapper needs torchvision; no address relied on
    if kind is DetectorKind.SFD:
        from face_alignment.detection.sfd.sfd_detector import models_urls
        return {"weights": models_urls["s3fd"]}
    from face_alignment.detection.blazeface.blazeface_detector import models_urls
    pre = "blazeface_back" if kind is DetectorKind.BLAZEFACE_BACK else "blazeface"
    return {"weights": models_urls[f"{pre}_weights"], "anchors": models_urls[f"{pre}_anchors"]}


def _basename(url: str) -> str:
    return Path(url.split("?")[0]).name


def verifier_kind(cfg: FacesConfig) -> Optional[DetectorKind]:
    """The second BlazeFace model that confirms faces from finer tiles (None: no pyramid)."""
    if (cfg.detector not in (DetectorKind.BLAZEFACE, DetectorKind.BLAZEFACE_BACK)
            or cfg.tile_pyramid is TilePyramid.OFF or cfg.tile_levels < 2):
        return None
    return (DetectorKind.BLAZEFACE if cfg.detector is DetectorKind.BLAZEFACE_BACK
            else DetectorKind.BLAZEFACE_BACK)


def resolve_weights(cfg: FacesConfig) -> dict[str, Path]:
    """role -> local file for every network the detector loads: `weights` (and `anchors`), plus
    `verifier_weights` / `verifier_anchors` for BlazeFace's pyramid: the other BlazeFace model's
    standard files beside faces.detector_weights, or downloaded when that is unset (given
    paths are checked; anchors default to the standard file beside the weights)."""
    planned = identity_files(cfg)
    if not planned:
        raise DetectorError(f"faces.detector_weights is not set: the {cfg.detector.value} detector is "
                            f"not downloaded; set faces.detector_weights to its weights file "
                            f"(e.g. mobilenet0.25_Final.pth)")
    files = {}
    for role, where in planned.items():
        if isinstance(where, Path):
            if not where.is_file():
                key = ("faces.tile_pyramid: verifier_" + role.removeprefix("verifier_")
                       if role.startswith("verifier_") else f"faces.detector_{role}")
                raise DetectorError(f"{key}: file not found: {where}")
            files[role] = where
        else:
            files[role] = _download(cfg.detector, role, where)
    return files


def _download(kind: DetectorKind, role: str, url: str) -> Path:
    from face_alignment.utils import load_file_from_url

    try:
        return Path(load_file_from_url(url, progress=False))
    except Exception as e:  # no internet, proxy, disk: say what to do instead
        raise DetectorError(
            f"could not download the {kind.value} {role} from {url} ({e}); offline, "
            f"set faces.detector_weights (and faces.detector_anchors) to local files") from None


def _planned(kind: DetectorKind, weights: Optional[Path], anchors: Optional[Path]) -> dict[str, Path | str]:
    """role -> the local file `_resolve` would use, or the address it would download from."""
    urls = _download_urls(kind)
    if weights is None:
        return dict(urls)
    files: dict[str, Path | str] = {"weights": Path(weights)}
    if "anchors" in urls:
        files["anchors"] = Path(anchors or Path(weights).with_name(_basename(urls["anchors"])))
    return files


def identity_files(cfg: FacesConfig) -> dict[str, Path | str]:
    """role -> local file (its content names it) or download address, for every network the
    detector loads, as `resolve_weights` would resolve them, without downloading anything."""
    files = _planned(cfg.detector, cfg.detector_weights, cfg.detector_anchors)
    other = verifier_kind(cfg)
    if other is not None:
        beside = None
        if cfg.detector_weights is not None:
            beside = Path(cfg.detector_weights).with_name(_basename(_download_urls(other)["weights"]))
        files |= {f"verifier_{role}": v for role, v in _planned(other, beside, None).items()}
    return files
