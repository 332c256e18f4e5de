"""Model bundles (pipeline/predict/bundle.py): export a trained head, import the paper's released files,
list what a folder holds. A bundle is built whole in a temporary folder beside its place and
renamed in (stages.bundle_publish): a failed export or import leaves the old bundle as it was.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import torch

from pipeline.aus import DECISION_THRESHOLD, AUSet, au_column
from pipeline.predict.bundle import (DETECTOR_DIR, FAN_FILE, HEAD_FILE, SPEC_FILE, BackboneSpec, BundleError,
                             BundleSpec, CropSpec, DetectorSpec, HeadLayout, read_spec, signed,
                             verify_files)
from pipeline.config import (Backbone, CropMode, DetectorKind, FacesConfig, RunConfig, TemporalMode,
                             Variant)
from pipeline.faces.weights import resolve_weights
from pipeline.manifest import label_matrix
from pipeline.folds import ALL_SUBJECTS, fold_name
from pipeline.hashing import file_sha256
from pipeline.models.reference import load_released_head, read_released_file
from store import location, manifests
from store.catalog import Catalog
from store.models import checked_head, read_checkpoint
from store.provenance import atomic_path, output_folder, read_provenance, write_json
from stages.bundle_publish import publish

# The reference release: its files, AU sets and published Avg F1 (its README and the paper).
REFERENCE_HEADS = {
    **{f"bp4d_split{k}": (AUSet.BP4D.numbers, "BP4D", k, 65.0) for k in (1, 2, 3)},
    **{f"disfa_split{k}": (AUSet.DISFA.numbers, "DISFA", k, 66.1) for k in (1, 2, 3)},
    "cross_model": (AUSet.UNION15.numbers, "undocumented", None, None),
}
REFERENCE_URL = "https://github.com/jingyang2017/AU-Net"
REFERENCE_T = 10  # the reference's temporal offset


def _copy(src: Path, dst: Path) -> str:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return file_sha256(dst)


def _detector(faces: FacesConfig, folder: Path) -> DetectorSpec:
    """The detector's settings and its weight files, copied into the bundle."""
    if faces.detector is DetectorKind.PROVIDED:  # landmarks came with the data: users need one
        faces = FacesConfig(detector=DetectorKind.BLAZEFACE, size=faces.size,
                            eye_distance=faces.eye_distance, box_margin=faces.box_margin)
    params = json.loads(faces.model_dump_json(exclude={"detector_weights", "detector_anchors"}))
    files = {}
    for role, path in resolve_weights(faces).items():
        params[f"{role}_file"] = Path(path).name
        files[role] = _copy(Path(path), folder / DETECTOR_DIR / Path(path).name)
    return DetectorSpec(faces=params, files=files)


def _write(folder: Path, spec: BundleSpec) -> Path:
    """model.json, signed with the digest of its semantic fields (pipeline.predict.bundle)."""
    write_json(folder / SPEC_FILE, json.loads(signed(spec).model_dump_json()))
    return folder


def accept_edit(folder: Path) -> BundleSpec:
    """Re-sign a bundle's hand-edited model.json (`aunet models --accept-edit`): its fields are
    validated, its files checked, and its digest recorded anew."""
    spec = read_spec(Path(folder), check_digest=False)
    verify_files(Path(folder), spec)
    _write(Path(folder), spec)
    return read_spec(Path(folder))


def export(cfg: RunConfig, catalog: Catalog, variant: Variant, fold: int, out: Path,
           name: str | None = None, detector: FacesConfig | None = None,
           force: bool = False) -> Path:
    """A bundle of this config's trained head of (variant, fold): fold `all` (0) is the model
    of every subject, what a user deploys; fold k was trained without test fold k. Holds the
    head's read lock (`train --force` may be replacing it); an existing bundle of another model
    at `out` is replaced only with `force`."""
    variant = Variant(variant)
    f = cfg.features
    if f.allow_download and f.weights is None:  # before anything reads f.weights as a path
        raise BundleError("export needs the FAN weights as a local file: set features.weights")
    with catalog.read_lock(cfg.dataset.name, "train", by="export"):
        head = checked_head(cfg, catalog, variant, fold)
        rec = read_provenance(head) or {}
        model = {"head_key": rec.get("key"), "dataset": cfg.dataset.name, "variant": variant.value,
                 "fold": fold_name(fold)}
        with publish(out, model, force) as tmp:  # a folder, or an s3:// URL
            tmp.mkdir(parents=True, exist_ok=True)
            _export_into(tmp, cfg, catalog, variant, fold, head, rec, name, detector)
    return out if location.is_url(out) else Path(out)


def _export_into(out: Path, cfg: RunConfig, catalog: Catalog, variant: Variant, fold: int,
                 head: Path, rec: dict, name: str | None, detector: FacesConfig | None) -> Path:
    blob = read_checkpoint(head)
    with atomic_path(out / HEAD_FILE) as tmp:
        torch.save(blob["state_dict"], tmp)
    f = cfg.features
    random = f.weights is None
    backbone = BackboneSpec(variant=f.backbone, random_seed=f.seed if random else None,
                            sha256=None if random else _copy(Path(f.weights), out / FAN_FILE))
    table = manifests.load(catalog, cfg.dataset.name, ["subject", "fold"]).to_pandas()
    subjects = sorted(table.subject[table.fold != fold].unique()) if fold != ALL_SUBJECTS \
        else sorted(table.subject.unique())
    metrics = {}
    if fold != ALL_SUBJECTS:  # this head's own test fold scores, from the latest matching run
        metrics = _fold_metrics(cfg, catalog, variant, fold)
    given = _thresholds(cfg, catalog, head, fold)
    subjects = [s for s in subjects if s not in set(given["subjects"])]  # validation: not trained on
    spec = BundleSpec(
        name=name or f"{cfg.dataset.name}-{variant.value}-{fold_name(fold)}", variant=variant,
        aus=list(blob["au_columns"]), thresholds=dict(zip(given["aus"], given["thresholds"])),
        temporal_offset=int(blob["temporal_offset"]),
        crop=CropSpec(mode=CropMode.ALIGNED, size=cfg.faces.size,
                      eye_distance=cfg.faces.eye_distance, box_margin=cfg.faces.box_margin),
        backbone=backbone, head_layout=HeadLayout.PROJECT, head_sha256=file_sha256(out / HEAD_FILE),
        detector=_detector(detector or cfg.faces, out), random_weights=bool(blob.get("random_weights")),
        feature_dtype=f.dtype,
        provenance={"source": "trained here", "dataset": cfg.dataset.name, "fold": fold_name(fold),
                    "trained_on_subjects": subjects, "head": catalog.rel(head),
                    "head_key": rec.get("key"), "code": rec.get("code"),
                    "identity": rec.get("identity"), "test_metrics": metrics,
                    "thresholds": {k: given[k] for k in ("choice", "source", "subjects", "n_frames",
                                                         "f1_validation")}})
    return _write(out, spec)


def _thresholds(cfg: RunConfig, catalog: Catalog, head: Path, fold: int) -> dict:
    """The head's thresholds: eval.threshold for every AU, or (eval.threshold_choice:
    validation) each AU's best-F1 point on the validation subjects it was trained without."""
    from pipeline.config import ThresholdChoice
    from stages import thresholds
    from store import features as feature_store
    from store.models import load_head

    model, meta = load_head(head)
    if cfg.eval.threshold_choice is ThresholdChoice.FIXED:
        return thresholds.fixed(meta["au_columns"], cfg.eval)
    store = feature_store.checked(cfg, catalog, cfg.dataset.name)
    return thresholds.validation_thresholds(manifests.load(catalog, cfg.dataset.name), store, model,
                                            meta, fold, cfg.eval, cfg.train.batch_size)


def untrained(out: Path, variant: Variant, aus: list[str], *, crop_size: int = 256, seed: int = 0,
              temporal_offset: int = REFERENCE_T, detector: FacesConfig | None = None) -> Path:
    """A bundle of an untrained head on the random backbone: for benchmarks and smoke tests of
    the prediction path only (random_weights is set, so predict refuses it without opt-in)."""
    from pipeline.models.heads import build_head

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with atomic_path(out / HEAD_FILE) as tmp:
        torch.save(build_head(variant, len(aus)).eval().state_dict(), tmp)
    spec = BundleSpec(name=f"untrained-{Variant(variant).value}", variant=variant, aus=list(aus),
                      thresholds={a: DECISION_THRESHOLD for a in aus}, temporal_offset=temporal_offset,
                      crop=CropSpec(size=crop_size), backbone=BackboneSpec(random_seed=seed),
                      head_sha256=file_sha256(out / HEAD_FILE),
                      detector=_detector(detector or FacesConfig(), out), random_weights=True,
                      provenance={"source": "untrained (benchmarks and tests only)"})
    return _write(out, spec)


def _fold_metrics(cfg: RunConfig, catalog: Catalog, variant: Variant, fold: int) -> dict:
    from store import tables
    from store.identity import eval_id

    run = tables.latest_run(catalog, cfg.dataset.name, eval_id(cfg))
    if run is None:
        return {}
    m = tables.read_run(catalog, "metrics", cfg.dataset.name, run).to_pandas()
    m = m[(m.variant == Variant(variant).value) & (m.fold == str(fold))
          & (m.eval_dataset == cfg.dataset.name)]
    return {"run": run, "f1": {r.au: round(float(r.f1), 4) for r in m.itertuples()}}


def import_reference(src: Path | None, out: Path, *, head: Path | None = None,
                     fan: Path | None = None, aus: list[int] | None = None,
                     name: str | None = None, detector: FacesConfig | None = None,
                     force: bool = False) -> list[Path]:
    """Bundles of the paper's released models: from a clone of the reference repository (one per
    checkpoint found), or from one head file and the FAN file with their AU numbers. An existing
    bundle of another head file is replaced only with `force`."""
    if src is not None:
        src = Path(src)
        fan = src / "models" / "2dfan2.pth"
        found = [(p, *REFERENCE_HEADS[p.stem]) for p in sorted((src / "checkpoints").glob("*.pth"))
                 if p.stem in REFERENCE_HEADS]
        if not found:
            raise BundleError(f"{src}: no released checkpoints (checkpoints/bp4d_split1.pth, ...); "
                              f"give a clone of {REFERENCE_URL}")
        jobs = [(p, aus_, f"aunet-{p.stem.replace('_split', '-split')}", data, k, f1)
                for p, aus_, data, k, f1 in found]
    else:
        if head is None or fan is None or not aus:
            raise BundleError("import-reference needs a clone of the reference, or --head, --fan "
                              "and --aus")
        jobs = [(Path(head), tuple(aus), name or f"aunet-{Path(head).stem}", "unknown", None, None)]
    if not Path(fan).is_file():
        raise BundleError(f"FAN weights not found: {fan} (the release's models/2dfan2.pth)")
    for path, numbers, *_ in jobs:  # every file checked before anything is written
        load_released_head(read_released_file(path), len(numbers), source=str(path))
    output_folder(Path(out))
    made = []
    for path, numbers, bundle_name, data, k, f1 in jobs:
        with publish(Path(out) / bundle_name, {"file_sha256": file_sha256(path)}, force) as tmp:
            _import_into(tmp, path, numbers, bundle_name, data, k, f1, Path(fan), detector)
        made.append(Path(out) / bundle_name)
    return made


def _import_into(folder: Path, path: Path, numbers: tuple[int, ...], bundle_name: str, data: str,
                 k: int | None, f1: float | None, fan: Path, detector: FacesConfig | None) -> Path:
    """One released head as a bundle, written into `folder` (a temporary folder)."""
    head_sha = _copy(path, folder / HEAD_FILE)
    columns = [au_column(n) for n in numbers]
    spec = BundleSpec(
        name=bundle_name, variant=Variant.AUNET, aus=columns,
        thresholds={a: DECISION_THRESHOLD for a in columns}, temporal_offset=REFERENCE_T,
        default_temporal=TemporalMode.EXACT, tta_flip=True,
        crop=CropSpec(mode=CropMode.REFERENCE, size=256),
        backbone=BackboneSpec(variant=Backbone.FAN2, sha256=_copy(Path(fan), folder / FAN_FILE)),
        head_layout=HeadLayout.RELEASED, head_sha256=head_sha,
        detector=_detector(detector or FacesConfig(), folder),
        provenance={"source": f"imported from the reference release ({REFERENCE_URL})",
                    "file": str(path), "file_sha256": head_sha, "trained_on": data,
                    "test_fold": k, "published_avg_f1": f1,
                    "note": "the reference crops around a RetinaFace box; this bundle uses "
                            "the configured detector's box (docs/predict.md)"})
    return _write(folder, spec)


def list_models(folder: Path) -> list[dict]:
    """Every bundle under `folder`: name, AUs, provenance summary; one that predict would refuse
    (unreadable, edited model.json, a changed or missing file) is listed with the reason."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"{folder}: no such folder" if not folder.exists() else
                          f"{folder} is a file; give the folder that holds the bundles")
    out = []
    for spec_file in sorted(folder.rglob(SPEC_FILE)):
        if any(part.startswith(".") for part in spec_file.relative_to(folder).parent.parts):
            continue  # a bundle being built (or left by a killed export), not a bundle
        try:
            spec = read_spec(spec_file.parent)
            verify_files(spec_file.parent, spec)
            out.append({"path": str(spec_file.parent), "name": spec.name, "variant": spec.variant.value,
                        "aus": spec.aus, "random_weights": spec.random_weights,
                        "source": spec.provenance.get("source"),
                        "trained_on": spec.provenance.get("dataset") or spec.provenance.get("trained_on"),
                        "fold": spec.provenance.get("fold") or spec.provenance.get("test_fold"),
                        "thresholds": _threshold_note(spec),
                        "defaults": {"temporal": spec.default_temporal.value,
                                     "tta": "flip" if spec.tta_flip else "none",
                                     "T": spec.temporal_offset, "crop": spec.crop.mode.value,
                                     "crop_size": spec.crop.size}})
        except BundleError as e:
            out.append({"path": str(spec_file.parent), "error": str(e)})
    return out


def _threshold_note(spec: BundleSpec) -> str:
    """Where a bundle's thresholds came from, in words (`aunet models`)."""
    rec = spec.provenance.get("thresholds") or {}
    values = sorted(set(spec.thresholds.values()))
    shown = ", ".join(f"{a} {t:g}" for a, t in spec.thresholds.items()) if len(values) > 1 else \
        f"{values[0]:g} for every AU" if values else "none"
    if rec.get("choice") == "validation":
        return (f"thresholds {shown}: chosen on {len(rec['subjects'])} validation subjects "
                f"({', '.join(rec['subjects'])}, {rec['n_frames']} frames) held out of training")
    return f"thresholds {shown}" + (": fixed (eval.threshold)" if rec else "")


DEMO_BUNDLE = "demo-{variant}-fold1"


def predict_demo_video(cfg: RunConfig, catalog: Catalog, detector: FacesConfig | None = None):
    """The demo's last step, as a user would take it: export the fold-1 model (AUNet where it
    was trained) as a bundle, string the frames of the fold-1 test subject with the most active
    AUs into an mp4, and predict it. Returns (bundle, video, subject, the predict summary with
    its `out` folder)."""
    from pipeline.config import PredictConfig
    from pipeline.datasets.demo_video import write_video
    from stages import predict

    variant = Variant.AUNET if Variant.AUNET in cfg.train.variants else cfg.train.variants[0]
    table = manifests.load(catalog, cfg.dataset.name).to_pandas()
    table = table[table.fold == 1]
    active = pd.Series((label_matrix(table, cfg.dataset.au_set) == 1).sum(1), index=table.index)
    subject = active.groupby(table.subject).sum().idxmax()  # the most expressive: a lively video
    video = write_video(cfg.dataset.root / "manifest.csv", subject,
                        cfg.dataset.root / "videos" / f"{subject}.mp4")
    # force: the folder is the demo's own, in its store; after a retrain (new code or settings)
    # its bundle is of another head, which the demo replaces as it retrained it
    bundle = export(cfg, catalog, variant, 1,
                    catalog.root / "bundles" / DEMO_BUNDLE.format(variant=variant.value),
                    detector=detector, force=True)
    out = catalog.root / "predictions"
    summary = predict.run(PredictConfig(inputs=(video,), model=bundle, out=out,
                                        allow_random_weights=cfg.features.allow_random_weights),
                          progress=False)
    return bundle, video, subject, summary | {"out": out}
