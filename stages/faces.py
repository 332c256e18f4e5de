"""Stage 1: detect and align one face per manifest frame into the crop store.

A unit is one block of `faces.chunk_frames` manifest rows (= one Zarr chunk of every array).
Frames are decoded in row order (images with a small thread pool, videos streaming with only the
wanted frames converted), detected in batches, and the face is chosen per frame by `faces.rule`.
Every row gets a record: a failed frame is `success=False` with a reason, never dropped.
"""
from __future__ import annotations

import socket
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import datetime as dt
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipeline.align import template
from pipeline.config import FacesConfig, RunConfig
from pipeline.detect import Detector, FaceStatus, make_detector, resolve_weights
from pipeline.manifest import BOX_COLUMNS
from store import crops as crop_store
from store.catalog import Catalog
from store.provenance import code_version, file_sha256, fingerprint
from stages.faces_frames import process_rows
from stages.manifest import built_path as built_manifest_path
from stages.manifest import manifest_key

STAGE = "faces"
CODE_MODULES = ("stages.faces", "stages.faces_frames", "pipeline.detect", "pipeline.blazeface",
                "pipeline.retinaface", "pipeline.persist", "pipeline.align",
                "pipeline.video", "store.crops")
ROW_COLUMNS = ["row", "video_id", "frame", "image_path", "video_path", "video_frame",
               *BOX_COLUMNS, "landmarks"]
MAX_ERRORS = 20  # error messages kept per unit and in the summary


@dataclass(frozen=True)
class FacesUnit:
    dataset: str
    store: str  # the crop store's path
    manifest: str  # the manifest's path
    chunk: int
    start: int  # first manifest row
    stop: int  # one past the last row
    key: str  # the block's input fingerprint


def _params(cfg: RunConfig) -> dict:
    return cfg.section("faces")


def _code() -> str:
    return code_version(*CODE_MODULES)


@lru_cache(maxsize=4)
def _detector_files(faces: FacesConfig) -> dict[str, str]:
    """role -> SHA-256 of the detector's weight files ({} for provided landmarks)."""
    if faces.detector.value == "provided":
        return {}
    return {f"{role}_sha256": file_sha256(p) for role, p in resolve_weights(faces).items()}


@lru_cache(maxsize=2)
def _detector(faces: FacesConfig) -> Detector | None:
    return make_detector(faces)  # once per process (dask workers included)


@lru_cache(maxsize=2)
def _manifest_rows(path: str, mtime_ns: int) -> pa.Table:
    return pq.read_table(path, columns=ROW_COLUMNS)


def _media_ids(rows: pa.Table) -> dict[str, list]:
    """File identity (size, mtime) of every image / video a block reads: a replaced file
    changes the block's key."""
    out = {}
    for col in ("image_path", "video_path"):
        for p in set(rows.column(col).drop_null().to_pylist()):
            try:
                st = Path(p).stat()
                out[p] = [st.st_size, st.st_mtime_ns]
            except OSError:
                out[p] = None
    return out


def _block_keys(table: pa.Table, chunk_frames: int, common: dict) -> list[str]:
    keys = []
    for start in range(0, table.num_rows, chunk_frames):
        rows = table.slice(start, chunk_frames)
        keys.append(fingerprint({"rows": rows.to_pylist(), "media": _media_ids(rows), **common}))
    return keys


def _store_attrs(cfg: RunConfig) -> dict:
    f = cfg.faces
    return {"template": template(f.size, f.eye_distance).tolist(), "reasons": FaceStatus.names(),
            "size": f.size, "eye_distance": f.eye_distance, "box_margin": f.box_margin,
            "keypoint_order": ["left_eye", "right_eye", "nose", "left_mouth", "right_mouth"]}


def plan(cfg: RunConfig, catalog: Catalog, *, force: bool = False) -> list[FacesUnit]:
    """Units for the blocks whose data is missing or whose inputs changed.

    Creates (or resizes) the store so units only ever write their own chunks.
    """
    name = cfg.dataset.name
    mpath = built_manifest_path(catalog, name)  # clear error when the manifest was never built
    table = _manifest_rows(str(mpath), mpath.stat().st_mtime_ns)
    path = catalog.crops(name, _params(cfg))
    f = cfg.faces
    common = {"params": _params(cfg), "code": _code(), "detector": _detector_files(f)}
    keys = _block_keys(table, f.chunk_frames, common)
    crop_store.prepare(path, n_frames=table.num_rows, chunk_frames=f.chunk_frames, size=f.size,
                       attrs=_store_attrs(cfg))
    done, stored = crop_store.chunk_state(path)
    units = []
    for c, key in enumerate(keys):
        if not force and done[c] and int(stored[c]) == crop_store.key_to_int(key):
            continue
        start = c * f.chunk_frames
        units.append(FacesUnit(name, str(path), str(mpath), c, start,
                               min(start + f.chunk_frames, table.num_rows), key))
    return units


def run_unit(cfg: RunConfig, catalog: Catalog, unit: FacesUnit) -> dict:
    """Detect, choose, align and write one block; per-frame failures are recorded, not raised."""
    t0 = time.perf_counter()
    mpath = Path(unit.manifest)
    rows = _manifest_rows(str(mpath), mpath.stat().st_mtime_ns).slice(unit.start, unit.stop - unit.start)
    if rows.column("row").to_pylist() != list(range(unit.start, unit.stop)):
        raise ValueError(f"{mpath}: rows {unit.start}..{unit.stop - 1} are not numbered in order; "
                         "rebuild the manifest")
    detector = _detector(cfg.faces)
    data, errors, timing = process_rows(rows.to_pylist(), cfg.faces, detector)
    crop_store.write_chunk(Path(unit.store), unit.chunk, unit.start, data, unit.key)
    reasons = Counter(FaceStatus(int(r)).name.lower() for r in data["reason"])
    return {"chunk": unit.chunk, "frames": len(rows), "faces": int(data["success"].sum()),
            "reasons": dict(reasons), "errors": errors[:MAX_ERRORS], "timing": timing,
            "seconds": time.perf_counter() - t0}


def _safe_unit(cfg: RunConfig, catalog: Catalog, unit: FacesUnit) -> dict:
    """run_unit, with an unexpected error turned into a failed-block record (the run goes on;
    the block stays not-done and is retried by the next run)."""
    try:
        return run_unit(cfg, catalog, unit)
    except Exception as e:  # noqa: BLE001 - reported in the summary, block left undone
        return {"chunk": unit.chunk, "frames": 0, "failed": f"rows {unit.start}..{unit.stop - 1}: "
                f"{type(e).__name__}: {e}", "seconds": 0.0}


def _provenance(cfg: RunConfig, catalog: Catalog, path: Path) -> dict:
    done, keys = crop_store.chunk_state(path)
    inputs = {"manifest": manifest_key(catalog, cfg.dataset.name), **_detector_files(cfg.faces),
              "blocks": fingerprint([int(k) if d else 0 for d, k in zip(done, keys)])}
    config, code = _params(cfg), _code()
    return {"stage": STAGE, "artifact": str(path), "config": config, "code_version": code,
            "inputs": inputs, "key": fingerprint({"config": config, "code": code, "inputs": inputs}),
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": socket.gethostname(), "template": _store_attrs(cfg)["template"],
            "eye_distance": cfg.faces.eye_distance, "box_margin": cfg.faces.box_margin,
            "detector_files": {k: str(v) for k, v in _weight_paths(cfg.faces).items()}}


def _weight_paths(faces: FacesConfig) -> dict:
    return {} if faces.detector.value == "provided" else resolve_weights(faces)


def finish(cfg: RunConfig, catalog: Catalog, results: list[dict]) -> dict:
    """Summary over the whole store (blocks computed now and skipped ones); writes provenance."""
    path = catalog.crops(cfg.dataset.name, _params(cfg))
    crop_store.finalize(path, _provenance(cfg, catalog, path))
    store = crop_store.CropStore(path)
    by_reason = Counter(FaceStatus(int(r)).name.lower() for r in store.reason[~store.success])
    done = store.chunk_done
    computed = sum(r["frames"] for r in results)
    seconds = sum(r["seconds"] for r in results)
    timing = Counter()
    for r in results:
        timing.update(r.get("timing", {}))
    errors = [e for r in results for e in r.get("errors", [])]
    failed = [r["failed"] for r in results if "failed" in r]
    return {
        "frames": store.n_frames, "faces_found": int(store.success.sum()),
        "failures": dict(sorted(by_reason.items())), "computed_frames": computed,
        "frames_per_second": round(computed / seconds, 2) if seconds > 0 else None,
        "seconds": round(seconds, 2), "timing": {k: round(v, 3) for k, v in timing.items()},
        "chunks": len(done), "computed_chunks": len(results) - len(failed),
        "skipped_chunks": len(done) - len(results), "failed_chunks": failed,
        "incomplete_chunks": int((~done).sum()), "errors": (errors + failed)[:MAX_ERRORS],
        "path": str(path), "key": crop_store.crop_store_key(path),
    }


def run(cfg: RunConfig, catalog: Catalog, *, force: bool = False, progress: bool = True,
        client=None) -> dict:
    """All of the stage under the (dataset, faces) lock; units in-process or over `client`."""
    with catalog.lock(cfg.dataset.name, STAGE):
        units = plan(cfg, catalog, force=force)
        bar = tqdm(total=sum(u.stop - u.start for u in units), unit="frame", desc="faces",
                   disable=not progress)
        results = []
        if client is not None and units:
            from distributed import as_completed

            futures = client.map(_safe_unit, [cfg] * len(units), [catalog] * len(units), units,
                                 pure=False)
            for fut in as_completed(futures):
                try:
                    res = fut.result()
                except Exception as e:  # noqa: BLE001 - a worker died: block left undone
                    res = {"chunk": -1, "frames": 0, "seconds": 0.0, "failed": f"worker: {e}"}
                results.append(res)
                bar.update(res["frames"])
        else:
            for u in units:
                res = _safe_unit(cfg, catalog, u)
                results.append(res)
                bar.update(u.stop - u.start)
        bar.close()
        return finish(cfg, catalog, results)


def format_summary(s: dict) -> str:
    fails = ", ".join(f"{k} {v}" for k, v in s["failures"].items()) or "none"
    fps = f"{s['frames_per_second']} frames/s" if s["frames_per_second"] else "n/a"
    lines = [
        f"faces: {s['faces_found']} of {s['frames']} frames have an aligned face",
        f"  failures by reason: {fails}",
        f"  computed {s['computed_frames']} frames in {s['computed_chunks']} chunks ({fps}); "
        f"skipped {s['skipped_chunks']} up-to-date chunks",
    ]
    if s["timing"]:
        total = sum(s["timing"].values()) or 1.0
        lines.append("  time: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in s["timing"].items()))
    if s["failed_chunks"]:
        lines.append(f"  {len(s['failed_chunks'])} chunks FAILED (rerun to retry):")
    lines += [f"    {e}" for e in s["errors"]]
    lines.append(f"  store: {s['path']}")
    return "\n".join(lines)
