"""Every stage on a store that is an S3 URL (a real SeaweedFS server, tests/seaweed.py): the mini
pipeline from manifest to report runs there, its report tables equal a local run's, a rerun
recomputes nothing, and no local folder named after the URL appears."""
from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.config import load_config
from store import tables
from store.catalog import Catalog

from conftest import run_stages, write_mini_dataset

ALL = ("manifest", "faces", "features", "prior", "train", "evaluate", "report")
VOLATILE = {"runs": ["created_utc", "timings_json", "config_json"]}


def _tables(catalog: Catalog) -> dict[str, pa.Table]:
    out = {}
    for name in tables.TABLES:
        t = tables.read(catalog, name).drop_columns(["run", *VOLATILE.get(name, [])])
        out[name] = t.sort_by([(c, "ascending") for c in t.column_names
                               if pa.types.is_string(t.schema.field(c).type)
                               or pa.types.is_integer(t.schema.field(c).type)])
    return out


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
    want, got = _tables(Catalog(local.store)), _tables(Catalog(remote.store))
    assert want["metrics"].num_rows and want["predictions"].num_rows
    for name in tables.TABLES:
        assert got[name].equals(want[name]), f"table {name} differs between S3 and local"
    assert not any(p.name.startswith("s3") for p in tmp_path.iterdir())  # no local shadow store
    # a rerun trusts everything it finds on S3
    assert run_stages(remote, "manifest")["skipped"]
    assert not run_stages(remote, "faces")["computed_chunks"]
    assert not run_stages(remote, "features")["computed_this_run"]
