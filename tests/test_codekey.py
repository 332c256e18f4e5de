"""Code keys cover the definitions a computation reaches, not the modules that declare settings.

Edits are made through `codekey.read_source` (the text the key is computed from), on the real
modules of the project.
"""
from __future__ import annotations

import ast

import pytest

from conftest import run_stages
from store import codekey

FEATURES = ("stages.features_compute",)
CROPS = ("stages.faces_frames", "pipeline.faces.factory:make_detector")
ALL_ENTRIES = {"manifest": ("stages.manifest",), "crops": CROPS, "features": FEATURES,
               "prior": ("stages.prior",), "train": ("stages.train",),
               "evaluate": ("stages.evaluate",), "report": ("stages.report",)}


@pytest.fixture
def edit(monkeypatch):
    """edit({module: new_source_fn}) makes the key see changed sources; undone after the test."""
    real = codekey.read_source

    def apply(changes: dict):
        paths = {codekey._origin(m): fn for m, fn in changes.items()}
        monkeypatch.setattr(codekey, "read_source",
                            lambda p: paths[p](real(p)) if p in paths else real(p))
        codekey.clear_cache()

    yield apply
    monkeypatch.undo()
    codekey.clear_cache()


def _node(module: str, name: str) -> ast.AST:
    """The (last) statement defining `name` in `module`, with its source positions."""
    return codekey._parsed(module).defs[name][-1]


def _changed(src: str, node: ast.AST) -> str:
    """`src` with one more statement at the end of the definition `node` (or its value wrapped)."""
    lines = src.split("\n")
    if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
        indent = " " * (node.col_offset + 4)
        lines.insert(node.end_lineno, f"{indent}_probe = 1")
    else:
        row = lines[node.end_lineno - 1]
        lines[node.end_lineno - 1] = row[:node.end_col_offset] + " or 0" + row[node.end_col_offset:]
    return "\n".join(lines)


def test_every_reached_definition_counts(edit):
    base = codekey.code_key(*FEATURES)
    units = [u for u in codekey.closure(*FEATURES) if u[1] != codekey.RESIDUE]
    assert ("pipeline.models.fan", "FrozenFAN") in units and len(units) > 20
    nodes = {u: _node(*u) for u in units}  # positions in the real sources, before any edit
    for (module, name), node in nodes.items():
        edit({module: lambda s, _n=node: _changed(s, _n)})
        assert codekey.code_key(*FEATURES) != base, f"a change to {module}.{name} left the key"


def test_comments_docstrings_and_unreached_code_do_not_count(edit):
    keys = {k: codekey.code_key(*e) for k, e in ALL_ENTRIES.items()}
    edit({"pipeline.models.fan": lambda s: s + "\n# a comment\ndef helper_nobody_calls():\n    return 1\n",
          "stages.features_compute": lambda s: s.replace('"""The features stage', '"""Edited: the features stage')})
    assert {k: codekey.code_key(*e) for k, e in ALL_ENTRIES.items()} == keys


def test_a_new_field_of_another_stage_or_cli_flag_changes_no_key(edit):
    keys = {k: codekey.code_key(*e) for k, e in ALL_ENTRIES.items()}
    edit({"pipeline.config.predict": lambda s: s.replace(
              "class PredictConfig(Strict):\n", "class PredictConfig(Strict):\n    new_option: int = 3\n"),
          "flows.cli": lambda s: s + "\nNEW_FLAG = '--new-flag'\n"})
    assert "new_option" in codekey.read_source(codekey._origin("pipeline.config.predict"))
    assert {k: codekey.code_key(*e) for k, e in ALL_ENTRIES.items()} == keys


def test_a_moved_definition_keeps_the_key(edit):
    base = codekey.code_key(*FEATURES)
    line = next(l for l in codekey._origin("stages.features_compute").read_text().split("\n")
                if l.startswith("PIXEL_SCALE ="))
    edit({"stages.features_compute": lambda s: s.replace(line, "from pipeline.models.fan import PIXEL_SCALE"),
          "pipeline.models.fan": lambda s: s + "\n" + line + "\n"})
    assert codekey.code_key(*FEATURES) == base


def test_the_fan_forward_changes_the_features_key_only(edit):
    keys = {k: codekey.code_key(*e) for k, e in ALL_ENTRIES.items()}
    edit({"pipeline.models.fan": lambda s: s.replace(
        'return torch.cat([t["F_l"], t["H1"] * a, t["H2"] * a], dim=1)',
        'return torch.cat([t["F_l"], t["H1"] * a, t["H2"] * a * 2], dim=1)')})
    now = {k: codekey.code_key(*e) for k, e in ALL_ENTRIES.items()}
    assert now["features"] != keys["features"]
    assert now["crops"] == keys["crops"] and now["manifest"] == keys["manifest"]


def test_an_alignment_change_recomputes_crops(edit):
    base = codekey.code_key(*CROPS)
    warp = _node("pipeline.faces.align", "warp")
    edit({"pipeline.faces.align": lambda s: _changed(s, warp)})
    assert codekey.code_key(*CROPS) != base


def test_stages_skip_after_a_declaration_edit_and_recompute_after_a_forward_edit(mini, edit):
    cfg = mini()
    run_stages(cfg, "manifest", "faces", "features")
    edit({"pipeline.config.predict": lambda s: s.replace(
        "class PredictConfig(Strict):\n", "class PredictConfig(Strict):\n    new_option: int = 3\n")})
    assert run_stages(cfg, "manifest")["skipped"]
    assert not run_stages(cfg, "faces")["computed_chunks"]
    assert not run_stages(cfg, "features")["computed_this_run"]
    edit({"pipeline.models.fan": lambda s: s.replace(
        'return torch.cat([t["F_l"], t["H1"] * a, t["H2"] * a], dim=1)',
        'return torch.cat([t["F_l"], t["H1"] * a, t["H2"] * a * 2], dim=1)')})
    assert not run_stages(cfg, "faces")["computed_chunks"]
    assert run_stages(cfg, "features")["computed_this_run"]
