"""`aunet evaluate --fold-draws K`: refused for fixed folds; K draws retrained, spread by hand."""
import pandas as pd
import pytest

from conftest import write_mini_dataset
from pipeline.config import load_config
from pipeline.errors import ConfigError
from stages import fold_draws
from store import manifests
from store.catalog import Catalog


def test_spread_by_hand():
    s = fold_draws.spread([{"d/au_fan": 0.5}, {"d/au_fan": 0.7}, {"d/au_fan": 0.6}])["d/au_fan"]
    assert s["mean"] == pytest.approx(0.6) and s["sd"] == pytest.approx(0.1)  # sqrt(0.02 / 2)
    assert (s["min"], s["max"]) == (0.5, 0.7)


def test_fixed_folds_are_refused(tmp_path):
    cfg = load_config(write_mini_dataset(tmp_path))  # folds: column
    with pytest.raises(ConfigError, match="stay fixed"):
        fold_draws.draw_configs(cfg, 3)


def test_two_draws_retrain_on_their_own_folds(tmp_path):
    cfg = load_config(write_mini_dataset(tmp_path, n_subjects=6, n_frames=6,
                                         dataset={"folds": "kfold", "n_folds": 3},
                                         train={"variants": ["au_fan"], "epochs": 1}))
    out = fold_draws.run(cfg, 2)
    assert not out["failed"] and [d["dataset"] for d in out["draws"]] == ["mini", "mini-draw1"]
    assert len(out["spread"]["mini/au_fan"]["per_draw"]) == 2
    cat = Catalog(cfg.store)
    folds = [manifests.load(cat, n, ["subject", "fold"]).to_pandas().drop_duplicates("subject")
             .set_index("subject").fold for n in ("mini", "mini-draw1")]
    assert not folds[0].equals(folds[1])  # another draw of the subject-exclusive folds
    assert (cat.rendered("mini") / "fold_draws.json").exists()
