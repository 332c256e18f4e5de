"""Evaluate + report on a tiny store (random heads on 16x16 features), golden Markdown, SQL."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from pipeline.aus import AUSet
from pipeline.config import DatasetConfig, EvalConfig, Layout, RunConfig, Variant
from pipeline.manifest import ManifestReport, finalize
from pipeline.models.heads import build_head, n_trainable
from stages import evaluate, report
from store import tables
from store.catalog import Catalog
from store.features import create_feature_store, mark_done, write_shard
from store.provenance import write_provenance, write_table

GOLDEN = Path(__file__).parent / "golden"
AUS = AUSet.DISFA.columns  # 8 AUs: small tables
N_SUBJECTS, N_FRAMES = 6, 6  # 2 subjects per fold
NO_FACE = (3, 20)  # rows without a face
VARIANTS = (Variant.AU_FAN, Variant.AUNET)  # one static, one temporal


def _dataset(cat: Catalog, name: str, au_set: AUSet, n_subjects: int, n_frames: int,
             no_face: tuple[int, ...], rng) -> None:
    """A manifest (subjects split 3 ways) and a 16x16 random feature store."""
    rows = []
    for s in range(n_subjects):
        for f in range(n_frames):
            labels = {au: int(rng.random() < 0.4) for au in au_set.columns}
            rows.append({"subject": f"S{s}", "session": "T1", "frame": f, "image_path": "x.jpg",
                         "fold": s * 3 // n_subjects + 1, **labels})
    df = pd.DataFrame(rows)
    df.loc[7, "AU01"] = pd.NA  # an unknown label
    table = finalize(df, name, au_set, ManifestReport())
    write_table(cat.manifest(name), table)
    write_provenance(cat.manifest(name), stage="manifest", config={}, code="test", inputs={})
    n = table.num_rows
    g = create_feature_store(cat.features(name, "fan2", "test"), n, size=16, frames_per_shard=n,
                             attrs={"provenance": {"key": "feat", "random_weights": True}})
    valid = np.ones(n, bool)
    valid[list(no_face)] = False
    write_shard(g, 0, rng.standard_normal((n, 768, 16, 16)).astype(np.float32), valid)
    mark_done(g, 0, "feat")


def _build(tmp_path: Path) -> tuple[RunConfig, Catalog]:
    rng = np.random.default_rng(0)
    cat = Catalog(tmp_path / "store")
    _dataset(cat, "tiny", AUSet.DISFA, N_SUBJECTS, N_FRAMES, NO_FACE, rng)
    _dataset(cat, "other", AUSet.BP4D, 3, 4, (), rng)  # cross-dataset: shares 5 AUs with DISFA
    from stages.heads_io import save_checkpoint
    for i, v in enumerate(VARIANTS):
        for fold in (1, 2, 3):
            torch.manual_seed(10 * i + fold)
            m = build_head(v, len(AUS))
            save_checkpoint(cat.head_checkpoint("tiny", v.value, fold, "h"), {
                "state_dict": m.state_dict(), "variant": v.value, "au_set": "disfa",
                "au_columns": AUS, "n_aus": len(AUS), "train_config": {"temporal_offset": 2}})
    cfg = RunConfig(dataset=DatasetConfig(name="tiny", layout=Layout.MANIFEST, root=tmp_path,
                                          au_set=AUSet.DISFA, folds="kfold"),
                    store=cat.root, eval=EvalConfig(bootstrap=50, cross_datasets=("other",)))
    return cfg, cat


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    cfg, cat = _build(tmp_path_factory.mktemp("eval"))
    summary = evaluate.run(cfg, cat, progress=False)
    return cfg, cat, summary


def test_evaluate_writes_one_complete_run(evaluated):
    cfg, cat, summary = evaluated
    assert not summary["skipped"] and summary["random_weights"]
    assert set(summary["written"]) == {"predictions", "metrics", "significance", "cooccurrence",
                                       "complexity", "runs"}  # no prior: no prior_metrics
    pred = tables.latest(cat, "predictions", "tiny").to_pandas()
    cross = pred[pred.eval_dataset == "other"]
    assert len(cross) == len(VARIANTS) * 12 and cross.AU09_label.isna().all()  # BP4D has no AU9
    pred = pred[pred.eval_dataset == "tiny"]
    assert len(pred) == len(VARIANTS) * N_SUBJECTS * N_FRAMES
    assert (~pred.face_found).sum() == len(VARIANTS) * len(NO_FACE)
    assert pred.loc[~pred.face_found, "AU01_prob"].isna().all()
    m = tables.latest(cat, "metrics", "tiny").to_pandas()
    assert set(m[m.eval_dataset == "other"].au) == {"AU01", "AU02", "AU04", "AU06", "AU12", "Avg"}
    m = m[m.eval_dataset == "tiny"]
    fan = pred[pred.variant == "au_fan"]
    for au in ("AU01", "AU26"):
        keep = fan.face_found & fan[f"{au}_label"].notna()
        expect = f1_score(fan.loc[keep, f"{au}_label"].astype(int),
                          (fan.loc[keep, f"{au}_prob"] >= 0.5).astype(int))
        row = m[(m.variant == "au_fan") & (m.fold == "pooled") & (m.au == au)].iloc[0]
        assert row.f1 == pytest.approx(expect) and row.n_no_face == len(NO_FACE)
    per_fold = m[(m.variant == "au_fan") & (m.au == "Avg") & m.fold.isin(["1", "2", "3"])].f1
    mean = m[(m.variant == "au_fan") & (m.au == "Avg") & (m.fold == "mean")].f1.iloc[0]
    assert mean == pytest.approx(per_fold.mean())
    sig = tables.latest(cat, "significance", "tiny").to_pandas()
    assert set(sig.variant) == {"aunet"} and len(sig) == 8  # 4 tests x 2 eval datasets
    assert sig[sig.unit == "subject_f1"].n.tolist() == [3, N_SUBJECTS]  # other, tiny
    comp = tables.latest(cat, "complexity", "tiny").to_pandas().set_index("variant")
    assert comp.loc["au_fan", "trainable_params"] == n_trainable(build_head(Variant.AU_FAN, len(AUS)))
    assert comp.loc["aunet", "gmacs"] == pytest.approx(3.83, abs=0.02)  # paper: 3.84
    co = tables.latest(cat, "cooccurrence", "tiny").to_pandas()
    co = co[co.eval_dataset == "tiny"]
    assert set(co.fold) == {"1", "2", "3", "pooled"} and len(co.r_pred.iloc[0]) == len(AUS) ** 2


def test_evaluate_again_is_skipped(evaluated):
    cfg, cat, summary = evaluated
    again = evaluate.run(cfg, cat, progress=False)
    assert again["skipped"] and again["run"] == summary["run"] and again["evaluated"] == []
    assert "up to date" in evaluate.format_summary(again)


def test_report_renders_files_with_banner(evaluated):
    cfg, cat, summary = evaluated
    out = report.run(cfg, cat)
    assert out["run"] == summary["run"] and not out["skipped"]
    names = {Path(f).name for f in out["files"]}
    assert {"report.md", "report.html", "f1_bars_tiny.png", "correlation_tiny.png",
            "f1_bars_other.png", "timeline_S0_T1.png"} <= names
    md = (cat.rendered("tiny") / "report.md").read_text()
    assert md.startswith("> **!!! UNTRAINED BACKBONE")
    assert "| AU26 |" in md and "| Avg |" in md
    for f in out["files"]:
        assert Path(f).stat().st_size > 0
    assert report.run(cfg, cat)["skipped"]


def test_run_query_on_small_store(evaluated):
    _, cat, _ = evaluated
    text = report.run_query(cat, "SELECT variant, count(*) AS n FROM predictions "
                                 "GROUP BY variant ORDER BY variant")
    lines = text.splitlines()
    assert lines[0].split() == ["variant", "n"]
    assert lines[2].split() == ["au_fan", str(N_SUBJECTS * N_FRAMES + 12)]
    assert lines[-1] == "(2 rows)"
    with pytest.raises(ValueError, match="query failed"):
        report.run_query(cat, "SELECT * FROM nosuchtable")


def _small_result() -> dict[str, pd.DataFrame]:
    metrics = pd.DataFrame([
        {"eval_dataset": "bp4d", "variant": v, "fold": "mean", "au": au, "f1": f1}
        for v, vals in (("au_fan", (0.549, 0.466, 0.507)), ("aunet", (0.598, 0.473, 0.535)))
        for au, f1 in zip(("AU01", "AU02", "Avg"), vals)])
    sig = pd.DataFrame([{"eval_dataset": "bp4d", "variant": "aunet", "unit": "frame_accuracy",
                         "n": 1000, "t": -26.4, "p": 1.51e-153, "diff": 0.028,
                         "ci_lo": float("nan"), "ci_hi": float("nan")},
                        {"eval_dataset": "bp4d", "variant": "aunet", "unit": "avg_f1", "n": 41,
                         "t": float("nan"), "p": float("nan"), "diff": 0.028, "ci_lo": 0.011,
                         "ci_hi": 0.046}])
    cooc = pd.DataFrame([{"eval_dataset": "bp4d", "variant": "aunet", "fold": "pooled", "l2": 1.234,
                          "l2_rms": 0.105, "dependency_f1": 0.8, "edges_pred": 9,
                          "edges_label": 11, "edges_matched": 8, "n": 1000}])
    comp = pd.DataFrame([{"variant": "au_fan", "trainable_params": 1857164, "gflops": 6.0226,
                          "gmacs": 3.0113, "paper_params_m": 1.86, "paper_gflops": 3.02}])
    return {"metrics": metrics, "significance": sig, "cooccurrence": cooc, "complexity": comp}


def test_rendered_markdown_matches_golden():
    md = report.render_markdown(report.sections(_small_result(), "bp4d", "r1", True))
    assert md == (GOLDEN / "report_small.md").read_text()
