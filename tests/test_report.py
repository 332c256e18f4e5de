"""Evaluate + report on a tiny store (random heads on 16x16 features), golden Markdown, SQL."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from conftest import run_stages, write_mini_dataset
from pipeline.aus import AUSet
from pipeline.config import RunConfig, Variant, load_config
from pipeline.errors import MissingArtifact, UserError
from pipeline.models.heads import build_head, n_trainable
from stages import evaluate, report_render, report_sections, runner
from store import tables
from store.catalog import Catalog
from store.query import run_query

GOLDEN = Path(__file__).parent / "golden"
AUS = AUSet.DISFA.columns  # 8 AUs: small tables
N_SUBJECTS, N_FRAMES = 6, 6  # 2 subjects per fold
NO_FACE = (3, 20)  # rows without a face
VARIANTS = (Variant.AU_FAN, Variant.AUNET)  # one static, one temporal


def _build(tmp_path: Path) -> tuple[RunConfig, Catalog]:
    """A DISFA-set dataset with trained heads, and a BP4D-set dataset to score them across."""
    store = tmp_path / "store"
    other = load_config(write_mini_dataset(tmp_path / "o", name="other", au_set="bp4d",
                                           n_subjects=3, n_frames=4, store=store, seed=1))
    run_stages(other, "manifest", "faces", "features")
    cfg = load_config(write_mini_dataset(
        tmp_path / "t", name="tiny", au_set="disfa", n_subjects=N_SUBJECTS, n_frames=N_FRAMES,
        no_face=NO_FACE, unknown=((7, "AU01"),), store=store,
        train={"epochs": 1, "max_steps_per_epoch": 1, "variants": [v.value for v in VARIANTS]},
        eval={"bootstrap": 50, "cross_datasets": ["other"]}))
    run_stages(cfg, "manifest", "faces", "features", "prior", "train")
    return cfg, Catalog(store)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    cfg, cat = _build(tmp_path_factory.mktemp("eval"))
    summary = run_stages(cfg, "evaluate")
    return cfg, cat, summary


def test_evaluate_writes_one_complete_run(evaluated):
    cfg, cat, summary = evaluated
    assert not summary["skipped"] and summary["random_weights"]
    assert set(summary["written"]) == {"predictions", "metrics", "significance", "cooccurrence",
                                       "complexity", "prior_metrics", "calibration", "runs"}
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
    again = run_stages(cfg, "evaluate")
    assert again["skipped"] and again["run"] == summary["run"] and again["evaluated"] == []
    assert "up to date" in evaluate.format_summary(again)


def test_report_renders_files_with_banner(evaluated):
    cfg, cat, summary = evaluated
    out = run_stages(cfg, "report")
    assert out["run"] == summary["run"] and not out["skipped"]
    names = {Path(f).name for f in out["files"]}
    assert {"report.md", "report.html", "f1_bars_tiny.png", "correlation_tiny.png",
            "f1_bars_other.png", "timeline_S0_T1.png", "reliability_tiny.png"} <= names
    md = (cat.rendered("tiny") / "report.md").read_text()
    assert md.startswith("> **!!! UNTRAINED BACKBONE")
    assert "| AU26 |" in md and "| Avg |" in md
    assert "Calibration on tiny" in md and "| all |" in md
    for f in out["files"]:
        assert Path(f).stat().st_size > 0
        if f.endswith(".png"):  # a real picture, with the random-weights banner across its top
            import cv2

            img = cv2.imread(str(f), cv2.IMREAD_COLOR)  # (H, W, 3) BGR
            assert img is not None and min(img.shape[:2]) > 200 and img.std() > 10, f
            banner = np.all(np.abs(img[: img.shape[0] // 8].astype(int) - [0, 0, 0xb0]) < 10, axis=2)
            assert banner.sum() > 200, f"{f}: no banner"
    assert run_stages(cfg, "report")["skipped"]


def test_run_query_on_small_store(evaluated):
    _, cat, _ = evaluated
    text = run_query(cat, "SELECT variant, count(*) AS n FROM predictions "
                                 "GROUP BY variant ORDER BY variant")
    lines = text.splitlines()
    assert lines[0].split() == ["variant", "n"]
    assert lines[2].split() == ["au_fan", str(N_SUBJECTS * N_FRAMES + 12)]
    assert lines[-1] == "(2 rows)"
    with pytest.raises(UserError, match="query failed"):
        run_query(cat, "SELECT * FROM nosuchtable")


def _small_result() -> dict[str, pd.DataFrame]:
    rates = {"AU01": 0.22, "AU02": 0.17, "Avg": 0.195}  # all present: F1 = 2p / (1 + p)
    metrics = pd.DataFrame([
        {"eval_dataset": "bp4d", "variant": v, "fold": "mean", "au": au, "f1": f1,
         "positive_rate": rates[au]}
        for v, vals in (("au_fan", (0.549, 0.466, 0.507)), ("aunet", (0.598, 0.473, 0.535)),
                        ("all_positive", (0.3607, 0.2906, 0.3256)))
        for au, f1 in zip(("AU01", "AU02", "Avg"), vals)])
    sig = pd.DataFrame([{"eval_dataset": "bp4d", "baseline": "au_fan", "variant": "aunet", "unit": "frame_accuracy",
                         "n": 1000, "t": -26.4, "p": 1.51e-153, "diff": 0.028,
                         "ci_lo": float("nan"), "ci_hi": float("nan")},
                        {"eval_dataset": "bp4d", "baseline": "au_fan", "variant": "aunet", "unit": "avg_f1", "n": 41,
                         "t": float("nan"), "p": float("nan"), "diff": 0.028, "ci_lo": 0.011,
                         "ci_hi": 0.046}])
    cooc = pd.DataFrame([{"eval_dataset": "bp4d", "variant": "aunet", "fold": "pooled", "l2": 1.234,
                          "l2_rms": 0.105, "dependency_f1": 0.8, "edges_pred": 9,
                          "edges_label": 11, "edges_matched": 8, "n": 1000}])
    comp = pd.DataFrame([{"variant": "au_fan", "trainable_params": 1857164, "gflops": 6.0226,
                          "gmacs": 3.0113, "paper_params_m": 1.86, "paper_gflops": 3.02}])
    return {"metrics": metrics, "significance": sig, "cooccurrence": cooc, "complexity": comp}


def test_rendered_markdown_matches_golden():
    md = report_render.render_markdown(report_sections.sections(_small_result(), "bp4d", "r1", True))
    assert md == (GOLDEN / "report_small.md").read_text()


def test_evaluate_uses_exactly_the_configs_heads_and_cleans_a_killed_run(tmp_path, monkeypatch):
    cfg, cat = _build(tmp_path)
    other_lr = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 2e-3})})
    with pytest.raises(MissingArtifact, match="no trained au_fan head for fold 1 of this config"):
        run_stages(other_lr, "evaluate")
    run_stages(other_lr, "train")
    first = run_stages(cfg, "evaluate")
    second = run_stages(other_lr, "evaluate")
    for summary, c in ((first, cfg), (second, other_lr)):
        pred = tables.read_run(cat, "predictions", "tiny", summary["run"]).to_pandas()
        want = {cat.head_dir(c, v, 1).name for v in VARIANTS}
        assert set(pred[pred.fold == 1].head_name) == want
    # the report renders the run its own config asked for, not the newest one
    assert run_stages(cfg, "report")["run"] == first["run"] != second["run"]

    real_append = tables.append

    def killed(catalog, name, *args, **kw):  # killed after two of the run's tables were written
        if name == "significance":
            raise KeyboardInterrupt("killed")
        return real_append(catalog, name, *args, **kw)

    monkeypatch.setattr(tables, "append", killed)
    with pytest.raises(KeyboardInterrupt):
        runner.execute("evaluate", cfg, cat, force=True, progress=False)
    monkeypatch.undo()
    runs = sorted(p.name for p in (cat.table_dir("predictions") / "dataset=tiny").iterdir())
    assert len(runs) == 3  # two complete runs and the killed one's partition
    n = run_query(cat, "SELECT count(DISTINCT run) AS n FROM predictions").splitlines()[2].strip()
    assert n == "2"  # the query views show complete runs only
    again = runner.execute("evaluate", cfg, cat, force=True, progress=False)
    assert any("run=" in c for c in again["cleaned"])
    assert len(list((cat.table_dir("predictions") / "dataset=tiny").iterdir())) == 3
    assert len(list((cat.table_dir("metrics") / "dataset=tiny").iterdir())) == 3
