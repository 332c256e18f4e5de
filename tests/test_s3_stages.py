"""Every stage on a store that is an S3 URL (a real SeaweedFS server, tests/seaweed.py): the mini
pipeline from manifest to report runs there, its report tables equal a local run's, a rerun
recomputes nothing, and no local folder named after the URL appears."""
from __future__ import annotations

import pytest
import torch

from pipeline.config import load_config
from store.catalog import Catalog

from conftest import SHARED, run_stages, write_mini_dataset
from run_tables import assert_same_tables, report_tables

ALL = ("manifest", "faces", "features", "prior", "train", "evaluate", "report")


@pytest.fixture
def configs(tmp_path, s3_bucket, one_thread):
    path = write_mini_dataset(tmp_path, n_subjects=3, n_frames=10, no_face=(3,))
    local = load_config(path)
    remote = local.model_copy(update={"store": f"s3://{s3_bucket}/team/store"})
    return local, remote


def test_the_whole_pipeline_runs_on_s3_and_equals_a_local_run(configs, tmp_path, monkeypatch):
    local, remote = configs
    monkeypatch.chdir(tmp_path)
    run_stages(local, *ALL)
    run_stages(remote, *ALL)
    assert_same_tables(report_tables(local.store), report_tables(remote.store), "S3")
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())  # no local shadow store
    # a rerun trusts everything it finds on S3
    assert run_stages(remote, "manifest")["skipped"]
    assert not run_stages(remote, "faces")["computed_chunks"]
    assert not run_stages(remote, "features")["computed_this_run"]
    _export_matches(local, remote, tmp_path)


def _export_matches(local, remote, tmp_path) -> None:
    """`aunet export` from the bucket writes the bundle a local store gives (same files)."""
    import json

    from pipeline.config import FacesConfig
    from stages.bundles import export

    blaze = SHARED / "weights" / "blazeface" / "blazeface.pth"
    if not blaze.exists():
        return  # no detector weights to put in a bundle here (test_predict.py skips alike)
    det = FacesConfig(detector_weights=blaze)
    a = export(local, Catalog(local.store), "au_fan", 1, tmp_path / "bundle-local", detector=det)
    b = export(remote, Catalog(remote.store), "au_fan", 1, tmp_path / "bundle-s3", detector=det)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        if f.suffix == ".pt":  # torch.save names its zip records after the file: compare weights
            x, y = (torch.load(p / f, weights_only=True) for p in (a, b))
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), f
        elif f.name != "model.json":  # (its provenance names the store)
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
    spec_a, spec_b = (json.loads((p / "model.json").read_text()) for p in (a, b))
    assert spec_a["thresholds"] == spec_b["thresholds"] and spec_a["aus"] == spec_b["aus"]
    _bundle_in_the_bucket(remote, det, b, tmp_path)


def _bundle_in_the_bucket(remote, det, local_bundle, tmp_path) -> None:
    """`aunet export --out s3://...` uploads the bundle (model.json last); `aunet predict
    --model s3://...` runs a cached copy of it; another model's bundle there needs --force."""
    import json

    from pipeline.predict.bundle import BundleError
    from stages.bundles import export
    from stages.predict import make_config
    from store import location

    url = str(location.as_path(remote.store).parent / "models" / "au_fan")
    assert export(remote, Catalog(remote.store), "au_fan", 1, url, detector=det) == url
    got = make_config(inputs=(str(tmp_path),), model=url, out=str(tmp_path / "out"))
    files = sorted(p.relative_to(got.model) for p in got.model.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(local_bundle) for p in local_bundle.rglob("*") if p.is_file())
    assert make_config(inputs=(str(tmp_path),), model=url, out=str(tmp_path / "o")).model == got.model
    with pytest.raises(BundleError, match="another model"):
        export(remote, Catalog(remote.store), "aunet", 1, url, detector=det)
    export(remote, Catalog(remote.store), "aunet", 1, url, detector=det, force=True)
    again = make_config(inputs=(str(tmp_path),), model=url, out=str(tmp_path / "o")).model
    assert again != got.model and json.loads((again / "model.json").read_text())["variant"] == "aunet"


def test_a_zarr_store_is_published_whole_and_a_half_upload_is_debris(s3_bucket, tmp_path):
    """publish_dir: the root zarr.json goes last, so a group opens whole or not at all; a kill
    mid-upload leaves a prefix without it, which the stage's cleanup removes."""
    from store import location
    from store.features import create_feature_store, is_complete_layout

    catalog = Catalog(f"s3://{s3_bucket}/s")
    base = catalog.dataset_dir("d") / "features"
    good = base / "a" / "features.zarr"
    create_feature_store(good, 5, channels=4, size=2, frames_per_shard=2, attrs={})
    assert is_complete_layout(good) and location.open_group(good)["features"].shape == (5, 4, 2, 2)
    # what a kill after the arrays' metadata but before the root zarr.json leaves
    half = base / "b" / "features.zarr"
    local = tmp_path / "features.zarr"
    create_feature_store(local, 5, channels=4, size=2, frames_per_shard=2, attrs={})
    for p in sorted(local.rglob("*")):
        if p.is_file() and p != local / "zarr.json":
            half.fs.put_file(str(p), f"{half.path}/{p.relative_to(local).as_posix()}")
    assert not is_complete_layout(half)
    assert [str(p) for p in location.debris(base)] == [str(half)]
    removed = catalog.clean("d", "features")
    assert removed == [catalog.rel(half)] and not location.objects(half.fs, half.path) and is_complete_layout(good)
    assert catalog.clean("d", "features") == []  # nothing left to remove
    # replacing a published store: the old one is gone before the new one appears
    create_feature_store(good, 7, channels=4, size=2, frames_per_shard=2, attrs={})
    assert location.open_group(good)["features"].shape[0] == 7
