"""The report's trust sections on small hand-made tables: what a reader sees."""
import pandas as pd

from stages import report_trust
from stages.report_render import render_markdown


def _name(v):
    return {"au_fan": "AU-FAN"}.get(v, v)


def test_threshold_and_group_sections_render():
    thr = pd.DataFrame([
        {"eval_dataset": "d", "variant": "au_fan", "fold": f, "au": au, "threshold": t,
         "fixed_threshold": 0.5, "f1_fixed": 0.40, "f1_chosen": 0.45, "n_val_subjects": 2,
         "val_subjects": ["S1", "S2"], "n_val_frames": 20}
        for f, au, t in (("1", "AU01", 0.3), ("1", "Avg", float("nan")), ("mean", "AU01", 0.3),
                         ("mean", "Avg", float("nan")))])
    grp = pd.DataFrame([
        {"eval_dataset": "d", "variant": "au_fan", "attribute": "sex", "group": g, "source": "built-in",
         "au": au, "n_subjects": n, "n_frames": 10 * n, "status": st, "f1": 0.5, "ci_lo": lo,
         "ci_hi": hi, "spread": sp, "p_perm": p, "n_perm": 99}
        for g, n, st, lo, hi, sp, p in (("F", 3, "alone", 0.4, 0.6, float("nan"), float("nan")),
                                        ("M", 2, "too_small", float("nan"), float("nan"),
                                         float("nan"), float("nan")))
        for au in ("AU01", "Avg")])
    md = render_markdown(report_trust.sections({"thresholds": thr, "groups": grp}, _name))
    assert "| AU01 | 0.30 | 40.0 | 45.0 |" in md
    assert "fold 1: 2 subjects (S1, S2), 20 frames" in md
    assert "| F | 3 | 30 | alone | 50.0 [40.0, 60.0] |" in md
    assert "| M | 2 | 20 | too small (< 3 subjects), not tested | 50.0 - |" in md
    assert "not run (fewer than two groups of 3 or more subjects)" in md
