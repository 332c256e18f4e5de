"""Stage 1: detect and align one face per manifest frame into the crop store.

A unit is one block of `faces.chunk_frames` manifest rows (= one Zarr chunk of every array).
Frames are decoded in row order (images with a small thread pool, videos streaming with only the
wanted frames converted), detected in batches, and the face is chosen per frame by `faces.rule`.
Every row gets a record: a failed frame is `success=False` with a reason, never dropped, and a
frame's own problem (unreadable file, a folder given as an image) never fails its block.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import pyarrow as pa

from pipeline.faces.align import template
from pipeline.config import FacesConfig, RunConfig
from pipeline.faces.factory import make_detector
from pipeline.faces.types import Detector, FaceStatus
from pipeline.errors import StaleArtifact
from stages.contract import Plan, UnitResult
from stages.faces_frames import process_rows
from store import crops as crop_store
from store import location
from store import manifests
from store import mix
from store.catalog import Catalog
from store.codekey import code_key
from store.identity import faces_identity
from store.provenance import record

STAGE = "faces"
MAX_ERRORS = 20  # error messages kept per unit and in the summary


@dataclass(frozen=True)
class FacesUnit:
    store: str  # the crop store's path
    manifest: str  # the manifest's path
    chunk: int
    start: int  # first manifest row
    stop: int  # one past the last row
    key: str  # the block's input key
    sequence: bool  # consecutive images of a video_id are one video's frames

    @property
    def name(self) -> str:
        return f"block{self.chunk}"

    @property
    def size(self) -> int:
        return self.stop - self.start

    def __str__(self) -> str:
        return self.name


def reads(cfg: RunConfig) -> list[tuple[str, str]]:
    return [(cfg.dataset.name, "manifest")]


@lru_cache(maxsize=2)
def _detector(faces: FacesConfig) -> Detector | None:
    return make_detector(faces)  # once per process (dask workers included)


def manifest_rows(catalog: Catalog, cfg: RunConfig) -> pa.Table:
    """The manifest columns a crop block is computed from (read once per manifest version)."""
    return manifests.rows(catalog, cfg.dataset.name, crop_store.ROW_COLUMNS)


def _store_attrs(cfg: RunConfig) -> dict:
    f = cfg.faces
    return {"template": template(f.size, f.eye_distance).tolist(), "reasons": FaceStatus.names(),
            "size": f.size, "eye_distance": f.eye_distance, "box_margin": f.box_margin,
            "keypoint_order": ["left_eye", "right_eye", "nose", "left_mouth", "right_mouth"]}


def plan(cfg: RunConfig, catalog: Catalog, *, force: bool = False, select=None) -> Plan:
    """Units for the blocks whose data is missing or whose inputs changed. Read-only."""
    if mix.is_mix(cfg):  # a mixed run reads its members' crop stores as they are
        return Plan([], [], {"mix": [m.dataset.name for m in mix.members(cfg)]})
    mpath = catalog.manifest(cfg.dataset.name)
    keys = crop_store.expected_keys(cfg, catalog)
    path = catalog.crops(cfg)
    n = manifest_rows(catalog, cfg).num_rows
    done = stored = None
    if crop_store.is_complete_layout(path):
        done, stored = crop_store.chunk_state(path)
        if len(done) != len(keys):
            done = stored = None  # another row count: every block is redone
    units, skipped = [], []
    step = cfg.faces.chunk_frames
    for c, key in enumerate(keys):
        unit = FacesUnit(str(path), str(mpath), c, c * step, min((c + 1) * step, n), key,
                         crop_store.sequence_images(cfg))
        if not force and done is not None and done[c] and int(stored[c]) == crop_store.key_to_int(key):
            skipped.append(unit.name)
        else:
            units.append(unit)
    return Plan(units, skipped, {"path": str(path), "keys": keys, "frames": n})


def prepare(cfg: RunConfig, catalog: Catalog, plan: Plan) -> None:
    crop_store.prepare(location.as_path(plan.context["path"]), n_frames=plan.context["frames"],
                       chunk_frames=cfg.faces.chunk_frames, size=cfg.faces.size,
                       attrs=_store_attrs(cfg))


def run_unit(cfg: RunConfig, catalog: Catalog, unit: FacesUnit, progress=None) -> dict:
    """Detect, choose, align and write one block; per-frame failures are recorded, not raised."""
    rows = manifest_rows(catalog, cfg).slice(unit.start, unit.stop - unit.start)
    if rows.column("row").to_pylist() != list(range(unit.start, unit.stop)):
        raise StaleArtifact(f"{unit.manifest}: rows {unit.start}..{unit.stop - 1} are not numbered "
                         "in order; rebuild the manifest")
    data, errors, timing = process_rows(rows.to_pylist(), cfg.faces, _detector(cfg.faces),
                                        sequence_images=unit.sequence)
    crop_store.write_chunk(location.as_path(unit.store), unit.chunk, unit.start, data, unit.key)
    if progress:
        progress(unit.size)
    return {"frames": unit.size, "faces": int(data["success"].sum()),
            "errors": errors[:MAX_ERRORS], "timing": timing}


def finish(cfg: RunConfig, catalog: Catalog, plan: Plan, results: list[UnitResult]) -> dict:
    """Record completion (only when every block holds its expected key) and summarise."""
    if "mix" in plan.context:
        return {"mix": plan.context["mix"]}
    path = location.as_path(plan.context["path"])
    keys = plan.context["keys"]
    if not path.exists():  # nothing was ever created (every unit failed before writing)
        return {"path": str(path), "frames": plan.context["frames"], "complete": False,
                "faces_found": 0, "failures": {}, "computed_frames": 0, "frames_per_second": None,
                "timing": {}, "chunks": len(keys), "computed_chunks": 0,
                "skipped_chunks": len(plan.skipped), "incomplete_chunks": len(keys), "errors": []}
    done, stored = crop_store.chunk_state(path)
    complete = bool(done.all()) and [f"{int(k):016x}" for k in stored] == list(keys)
    rec = None
    if complete:
        rec = record(stage=STAGE, name=catalog.rel(path), identity=faces_identity(cfg),
                     inputs={"blocks": crop_store.store_key(keys)},
                     code=code_key(*crop_store.CODE_ENTRY))
        rec["key"] = crop_store.store_key(keys)  # consumers check this against the config's keys
    crop_store.finalize(path, rec)
    store = crop_store.CropStore(path)
    written = crop_store.chunk_rows_done(done, cfg.faces.chunk_frames, store.n_frames)
    success = store.success & written
    by_reason = Counter(FaceStatus(int(r)).name.lower() for r in store.reason[written & ~store.success])
    ok = [r for r in results if r.ok]
    computed = sum(r.data["frames"] for r in ok)
    seconds = sum(r.seconds for r in ok)
    timing = Counter()
    for r in ok:
        timing.update(r.data.get("timing", {}))
    errors = [e for r in ok for e in r.data.get("errors", [])]
    return {
        "path": str(path), "frames": store.n_frames, "complete": complete,
        "faces_found": int(success.sum()), "failures": dict(sorted(by_reason.items())),
        "computed_frames": computed,
        "frames_per_second": round(computed / seconds, 2) if seconds > 0 else None,
        "timing": {k: round(v, 3) for k, v in timing.items()},
        "chunks": len(keys), "computed_chunks": len(ok), "skipped_chunks": len(plan.skipped),
        "incomplete_chunks": int((~done).sum()), "errors": errors[:MAX_ERRORS],
        "key": rec["key"] if rec else None,
    }


def format_summary(s: dict) -> str:
    if "mix" in s:
        return (f"faces: a mixed run uses its members' crop stores ({', '.join(s['mix'])}); "
                "run each member's pipeline to make them")
    fails = ", ".join(f"{k} {v}" for k, v in s["failures"].items()) or "none"
    fps = f"{s['frames_per_second']} frames/s" if s["frames_per_second"] else "n/a"
    lines = [
        f"faces: {s['faces_found']} of {s['frames']} frames have an aligned face",
        f"  failures by reason: {fails}",
        f"  computed {s['computed_frames']} frames in {s['computed_chunks']} blocks ({fps}); "
        f"skipped {s['skipped_chunks']} up-to-date blocks",
    ]
    if s["timing"]:
        total = sum(s["timing"].values()) or 1.0
        lines.append("  time: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in s["timing"].items()))
    if not s["complete"]:
        lines.append(f"  INCOMPLETE: {s['incomplete_chunks']} of {s['chunks']} blocks not written; "
                     "rerun `aunet faces` to finish them")
    lines += [f"    {e}" for e in s["errors"]]
    lines.append(f"  store: {s['path']}")
    return "\n".join(lines)
