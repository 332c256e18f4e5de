"""What `aunet predict` reads: its inputs as units, each with an output name of its own.

A unit is one input: a video file, the images of one folder (each an independent image), or,
with `sequence`, a folder of images that are one video's frames in name order. Folders are
searched recursively, except for what this tool wrote: the output folder, and any folder holding
`OUTPUT_MARK` (every predict output folder gets one), so a second run with `--out` inside an
input folder never reads the first run's crops, tables or annotated videos as inputs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pipeline.config import PredictConfig
from store.provenance import write_json

VIDEO_EXT = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
OUTPUT_MARK = ".aunet-predict-output"  # in every output folder: never searched for inputs


class UnitKind(str, Enum):
    VIDEO = "video"
    IMAGES = "images"  # independent stills, one detector call each
    SEQUENCE = "sequence"  # a folder's images are one video's frames, in name order


@dataclass(frozen=True)
class PredictUnit:
    kind: str  # UnitKind: a video, independent images, or the frames of one video
    name: str  # output stem, unique among this run's units (case-insensitively)
    source: str  # the video, or the folder of the images
    files: tuple[str, ...] = ()  # images, in order

    size = 0

    def __str__(self) -> str:
        return self.name


def mark_output(out: Path) -> None:
    """Mark `out` as a predict output folder (before anything is written into it)."""
    marker = Path(out) / OUTPUT_MARK
    if not marker.is_file():
        write_json(marker, {"written_by": "aunet predict: outputs, never read as inputs"})


def _media(folder: Path, skip: set[Path]) -> tuple[list[Path], dict[Path, list[Path]]]:
    videos, images = [], {}
    for root, dirs, names in os.walk(folder):
        here = Path(root)
        if here.resolve() in skip or OUTPUT_MARK in names:
            dirs[:] = []  # an output folder: nothing under it is an input
            continue
        dirs.sort()
        for n in sorted(names):
            p = here / n
            if p.suffix.lower() in VIDEO_EXT:
                videos.append(p)
            elif p.suffix.lower() in IMAGE_EXT:
                images.setdefault(p.parent, []).append(p)
    return sorted(videos), images


def _unique(out: list[PredictUnit]) -> list[PredictUnit]:
    """Each unit's name, or its parent folder's name before it, then a number, until it is one
    no other unit has (compared case-insensitively: macOS and Windows folders are)."""
    taken: set[str] = set()
    named = []
    for u in out:
        base = u.name
        candidates = [base, f"{Path(u.source).parent.name}_{base}"]
        name = next((c for c in candidates if c.lower() not in taken), None)
        k = 2
        while name is None:
            if f"{candidates[1]}_{k}".lower() not in taken:
                name = f"{candidates[1]}_{k}"
            k += 1
        taken.add(name.lower())
        named.append(PredictUnit(u.kind, name, u.source, u.files))
    return named


def units(cfg: PredictConfig) -> list[PredictUnit]:
    """One unit per video, per folder of images (or image sequence), per missing path."""
    kind = UnitKind.SEQUENCE if cfg.sequence else UnitKind.IMAGES
    skip = {Path(cfg.out).resolve()}
    out: list[PredictUnit] = []
    loose: dict[Path, list[Path]] = {}
    for raw in cfg.inputs:
        p = Path(raw)
        if p.is_dir():
            videos, images = _media(p, skip)
            out += [PredictUnit(UnitKind.VIDEO, v.stem, str(v)) for v in videos]
            out += [PredictUnit(kind, folder.name, str(folder), tuple(map(str, files)))
                    for folder, files in images.items()]
        elif p.suffix.lower() in IMAGE_EXT and p.is_file():
            loose.setdefault(p.parent, []).append(p)
        else:  # a video, or something that will fail by name when it runs
            out.append(PredictUnit(UnitKind.VIDEO, p.stem, str(p)))
    out += [PredictUnit(kind, folder.name, str(folder), tuple(map(str, files)))
            for folder, files in loose.items()]
    return _unique(out)
