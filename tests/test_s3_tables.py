"""Report tables and `aunet query` on a store that is an S3 URL (store/location.py), against a
real S3 server (SeaweedFS, tests/seaweed.py): append, read, latest, incomplete-run cleanup and
DuckDB SQL through the store's fsspec filesystem; credentials only in the AWS variables."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipeline.errors import UserError
from store import tables
from store.catalog import Catalog
from store.provenance import read_provenance
from store.query import run_query

RUNS = ("20260101T000000000000-1", "20260102T000000000000-1")


def _runs(created: str) -> pa.Table:
    row = {c: [None] for c in tables.schema("runs").names}
    row |= {"random_weights": [False], "variants": [["au_fan"]], "eval_datasets": [["d"]],
            "n_units": [1], "created_utc": [created], "config_key": ["k"]}
    return pa.table(row)


def _metrics(f1: float) -> pa.Table:
    row = {c: [1] for c in ("n", "n_pos", "tp", "fp", "fn", "tn", "n_no_face", "n_unknown")}
    row |= {"eval_dataset": ["d"], "variant": ["au_fan"], "fold": ["mean"], "au": ["Avg"],
            "f1": [f1], "precision": [0.5], "recall": [0.5], "accuracy": [0.5],
            "threshold": [0.5], "positive_rate": [0.2]}
    return pa.table(row)


@pytest.fixture()
def s3_store(s3_bucket) -> Catalog:
    cat = Catalog(f"s3://{s3_bucket}/team/store/")
    for i, run in enumerate(RUNS):
        tables.append(cat, "metrics", "d", run, _metrics(0.25 * (i + 1)))
        tables.append(cat, "runs", "d", run, _runs(f"2026-01-0{i + 1}T00:00:00"))
    return cat


def test_a_url_store_is_remote_and_names_its_artifacts_relative(s3_store, s3_bucket):
    assert s3_store.remote and str(s3_store.root) == f"s3://{s3_bucket}/team/store"
    part = s3_store.report_part("metrics", "d", RUNS[0])
    rec = read_provenance(part)
    assert rec["artifact"] == f"reports/metrics/dataset=d/run={RUNS[0]}/part-0.parquet"
    assert len(rec["sha256"]) == 64
    assert s3_bucket not in json.dumps(rec["identity"]) and "SECRET" not in json.dumps(rec).upper()


def test_tables_read_back_from_s3(s3_store):
    assert tables.run_ids(s3_store, "d") == list(RUNS)
    assert tables.latest_run(s3_store, "d") == RUNS[1]
    assert tables.latest_run(s3_store, "d", config_key="k") == RUNS[1]
    m = tables.read(s3_store, "metrics").to_pandas().sort_values("run")
    assert list(m.f1) == [0.25, 0.5] and list(m.run) == list(RUNS)
    assert tables.latest(s3_store, "metrics").column("f1").to_pylist() == [0.5]
    assert tables.read_run(s3_store, "metrics", "d", RUNS[0]).column("f1").to_pylist() == [0.25]


def test_append_only_on_s3(s3_store):
    with pytest.raises(FileExistsError):
        tables.append(s3_store, "metrics", "d", RUNS[0], _metrics(0.9))


def test_incomplete_runs_are_hidden_then_removed(s3_store):
    orphan = "20260103T000000000000-1"
    tables.append(s3_store, "metrics", "d", orphan, _metrics(0.75))  # no runs row: a killed evaluate
    assert "0.75" not in run_query(s3_store, "SELECT f1 FROM metrics")
    removed = tables.remove_incomplete_runs(s3_store, "d")
    assert [p.name for p in removed] == [f"run={orphan}"]
    assert not s3_store.report_part("metrics", "d", orphan).exists()
    assert len(tables.part_files(s3_store, "metrics")) == len(RUNS)


def test_query_answers_over_s3(s3_store):
    out = run_query(s3_store, "SELECT run, f1 FROM metrics ORDER BY run")
    assert out.endswith("(2 rows)") and "0.25" in out and "0.5" in out
    assert run_query(s3_store, "SELECT count(*) AS n FROM runs").splitlines()[2].strip() == "2"


@pytest.mark.parametrize("sql", ["SELECT * FROM read_csv('/etc/passwd')",
                                 "COPY (SELECT 1 AS a) TO 's3://{bucket}/stolen.csv'",
                                 "INSTALL httpfs"])
def test_query_over_s3_stays_read_only(s3_store, s3_bucket, sql):
    with pytest.raises(UserError):
        run_query(s3_store, sql.format(bucket=s3_bucket))
    assert not s3_store.root.fs.exists(f"{s3_bucket}/stolen.csv")


def test_aunet_query_on_an_s3_store(s3_store, capsys):
    from flows.cli import main

    assert main(["query", "--store", str(s3_store.root), "SELECT max(f1) AS best FROM metrics"]) == 0
    assert capsys.readouterr().out.splitlines()[2].strip() == "0.5"


def test_config_keeps_a_store_url_as_given(tmp_path):
    import yaml

    from pipeline.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"dataset": {"name": "d", "layout": "demo", "root": "data",
                                                "au_set": "bp4d"},
                                    "faces": {"detector": "provided"},
                                    "store": "s3://bucket/team/store"}))
    cfg = load_config(path)
    assert cfg.store == "s3://bucket/team/store" and Catalog(cfg.store).remote
    local = load_config(path, {"store": "artifacts"}).store
    assert not Catalog(local).remote


def test_checkpoints_on_s3_are_published_whole_and_trusted(s3_bucket):
    import torch

    from store.models import read_checkpoint, save_checkpoint
    from store.provenance import record, trusted, write_provenance

    cat = Catalog(f"s3://{s3_bucket}/store")
    path = cat.dataset_dir("d") / "models" / "au_fan" / "fold1" / "h" / "final.pt"
    save_checkpoint(path, {"state_dict": {"w": torch.arange(4.0)}, "variant": "au_fan"})
    rec = write_provenance(path, record(stage="train", name=cat.rel(path), identity={}, inputs={},
                                        code="c"))
    assert rec["artifact"] == "d/models/au_fan/fold1/h/final.pt"
    assert torch.equal(read_checkpoint(path)["state_dict"]["w"], torch.arange(4.0))
    assert trusted(path, rec["key"]) is not None
    path.write_bytes(b"not a checkpoint")  # replaced behind the store's back: no longer trusted
    assert trusted(path, rec["key"]) is None
    assert not [p for p in path.parent.iterdir() if "tmp" in p.name]  # nothing set aside remotely
