"""Scores: per-AU detection metrics, co-occurrence faithfulness, paired significance tests."""
