"""Report tables: declared schemas, append-only partitions, reads across partitions."""
import pyarrow as pa
import pytest

from store import tables
from store.catalog import Catalog
from store.provenance import read_provenance


def _metrics(variant="au_fan", f1=0.5):
    return pa.table({"eval_dataset": ["demo"], "variant": [variant], "fold": ["pooled"],
                     "au": ["AU01"], "f1": [f1], "precision": [0.4], "recall": [0.6],
                     "accuracy": [0.7], "n": [10], "n_pos": [3], "tp": [2], "fp": [3], "fn": [1],
                     "tn": [4], "n_no_face": [1], "n_unknown": [0], "threshold": [0.5],
                     "positive_rate": [0.3]})


def _runs():
    return pa.table({"created_utc": ["t"], "config_key": ["c"], "config_json": ["{}"], "code_version": ["v"],
                     "inputs_json": ["{}"], "inputs_key": ["k"], "timings_json": ["{}"],
                     "random_weights": [True], "variants": [["au_fan"]],
                     "eval_datasets": [["demo"]], "n_units": [1]})


def test_append_refuses_overwrite_and_reads_back(tmp_path):
    cat = Catalog(tmp_path)
    path = tables.append(cat, "metrics", "demo", "r1", _metrics())
    assert path == cat.report_part("metrics", "demo", "r1")
    assert read_provenance(path)["table"] == "metrics"
    with pytest.raises(FileExistsError, match="append-only"):
        tables.append(cat, "metrics", "demo", "r1", _metrics(f1=0.9))
    tables.append(cat, "metrics", "demo", "r2", _metrics("aunet", 0.8))
    tables.append(cat, "metrics", "other", "r1", _metrics("au_vae", 0.3))
    t = tables.read(cat, "metrics").to_pandas().sort_values(["dataset", "run"])
    assert list(zip(t["dataset"], t["run"], t["f1"])) == [
        ("demo", "r1", 0.5), ("demo", "r2", 0.8), ("other", "r1", 0.3)]
    assert t["n"].dtype == "int64"
    assert tables.read(cat, "metrics", "other").num_rows == 1


def test_latest_uses_complete_runs_only(tmp_path):
    cat = Catalog(tmp_path)
    for run, f1 in (("20250101T000000000000-1", 0.1), ("20250102T000000000000-1", 0.2),
                    ("20250103T000000000000-1", 0.3)):
        tables.append(cat, "metrics", "demo", run, _metrics(f1=f1))
    # the third run never wrote its runs row: it is not complete
    for run in ("20250101T000000000000-1", "20250102T000000000000-1"):
        tables.append(cat, "runs", "demo", run, _runs())
    assert tables.latest_run(cat, "demo") == "20250102T000000000000-1"
    assert tables.latest(cat, "metrics", "demo").column("f1").to_pylist() == [0.2]
    assert tables.latest(cat, "significance").num_rows == 0


def test_schema_is_enforced(tmp_path):
    cat = Catalog(tmp_path)
    with pytest.raises(tables.TableError, match="missing columns"):
        tables.append(cat, "metrics", "demo", "r", _metrics().drop_columns(["f1"]))
    with pytest.raises(tables.TableError, match="undeclared"):
        tables.append(cat, "metrics", "demo", "r", _metrics().append_column("x", pa.array([1])))
    with pytest.raises(tables.TableError, match="partition is dataset=demo"):
        tables.append(cat, "metrics", "demo", "r", _metrics().append_column("dataset", pa.array(["b"])))
    assert not cat.report_part("metrics", "demo", "r").exists()


def test_predictions_with_different_au_sets_unify(tmp_path):
    cat = Catalog(tmp_path)
    base = {"eval_dataset": ["d"], "variant": ["au_fan"], "fold": [1], "head_name": ["h"],
            "row": [0], "subject": ["s"], "video_id": ["v"], "frame": [0], "face_found": [True]}
    tables.append(cat, "predictions", "a", "r", pa.table(base | {
        "AU01_prob": [0.7], "AU01_pred": [1], "AU01_label": [1]}))
    tables.append(cat, "predictions", "b", "r", pa.table(base | {
        "AU02_prob": [0.2], "AU02_pred": [0], "AU02_label": [None]}))
    t = tables.read(cat, "predictions")
    assert t.schema.field("AU01_prob").type == pa.float32()
    assert sorted(t.column("AU02_prob").to_pylist(), key=str) == [0.20000000298023224, None]
    assert tables.schema("predictions", ["AU01"]).metadata[b"schema_version"] == b"2"
