"""Configuration loading: unknown keys, relative paths, enum values, the shipped configs."""
from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.aus import AUSet
from pipeline.config import (ConfigError, DetectorKind, FoldScheme, Layout, OnBadInput, RunConfig,
                             load_config)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

MINIMAL = """
dataset:
  name: mine
  layout: list
  root: data/mine
  au_set: bp4d
  list_paths: lists/paths.txt
  list_labels: /abs/labels.txt
store: ../artifacts
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfgs" / "run.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL))
    base = (tmp_path / "cfgs").resolve()
    assert cfg.dataset.root == base / "data" / "mine"
    assert cfg.dataset.list_paths == base / "lists" / "paths.txt"
    assert cfg.dataset.list_labels == Path("/abs/labels.txt")  # absolute stays as written
    assert cfg.store == (tmp_path / "artifacts").resolve()
    # defaults come from the models: standard folds, raise on bad input, DISFA threshold 2
    assert cfg.dataset.folds is FoldScheme.STANDARD
    assert cfg.dataset.on_bad_input is OnBadInput.RAISE
    assert cfg.dataset.occurrence_threshold == 2
    assert cfg.dataset.layout is Layout.LIST and cfg.dataset.au_set is AUSet.BP4D


@pytest.mark.parametrize("where,text", [
    ("dataset.colour", MINIMAL.replace("au_set: bp4d", "au_set: bp4d\n  colour: red")),
    ("train.epoch", MINIMAL + "train:\n  epoch: 3\n"),
    ("stor", MINIMAL.replace("store:", "stor:")),
])
def test_unknown_key_is_rejected_with_its_name(tmp_path, where, text):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, text))
    assert where in str(e.value) and "run.yaml" in str(e.value)


@pytest.mark.parametrize("key,bad", [("layout", "bp5d"), ("au_set", "ck+"), ("folds", "random"),
                                     ("on_bad_input", "ignore"), ("disfa_source", "webcam")])
def test_enum_values_are_validated(tmp_path, key, bad):
    old = {"layout": "layout: list", "au_set": "au_set: bp4d"}.get(key)
    text = (MINIMAL.replace(old, f"{key}: {bad}") if old  # replace an existing key's value
            else MINIMAL.replace("  au_set: bp4d", f"  au_set: bp4d\n  {key}: {bad}"))
    with pytest.raises(ConfigError, match=rf"dataset\.{key}"):
        load_config(_write(tmp_path, text))


def test_out_of_range_and_missing_values(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset\.occurrence_threshold"):
        load_config(_write(tmp_path, MINIMAL), {"dataset.occurrence_threshold": 6})
    with pytest.raises(ConfigError, match=r"dataset\.name"):
        load_config(_write(tmp_path, MINIMAL.replace("  name: mine\n", "")))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "dataset: [unclosed"))


def test_overrides_use_dotted_keys(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL), {"dataset.on_bad_input": "skip", "train.epochs": 2})
    assert cfg.dataset.on_bad_input is OnBadInput.SKIP and cfg.train.epochs == 2


def test_config_is_frozen(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL))
    with pytest.raises(ValidationError, match="frozen"):
        cfg.dataset.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("name,layout", [("demo", Layout.DEMO), ("bp4d", Layout.BP4D),
                                         ("disfa", Layout.DISFA), ("affwild2", Layout.AFFWILD2)])
def test_shipped_configs_load(name, layout):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert isinstance(cfg, RunConfig) and cfg.dataset.layout is layout
    assert cfg.store.is_absolute() and cfg.dataset.root.is_absolute()


def test_demo_needs_provided_landmarks(tmp_path):
    with pytest.raises(ConfigError, match="provided"):
        load_config(CONFIGS / "demo.yaml", {"faces.detector": DetectorKind.SFD.value})


def test_head_training_defaults_follow_the_reference():
    """train_video_vae.py: AdamW(lr=0.0001, betas=(0.9, 0.999), weight_decay=0)."""
    from pipeline.config import TrainConfig

    t = TrainConfig()
    assert t.weight_decay == 0.0 and t.lr == 1e-4 and t.epochs == 12 and t.batch_size == 64


@pytest.mark.parametrize("key,value", [
    ("faces.size", 0), ("faces.size", -64), ("train.batch_size", 0), ("prior.epochs", 0),
    ("train.lr", -1), ("train.lr", float("nan")), ("train.temporal_offset", -3),
    ("eval.bootstrap", -5), ("features.device", "tpu"), ("train.epochs", -1),
    ("eval.threshold", 2.0), ("eval.threshold", 0.0), ("eval.threshold", 1.0),
    ("train.max_steps_per_epoch", 0), ("prior.lr", 0), ("prior.lambdas", []),
    ("train.weight_decay", -0.1), ("prior.batch_size", 0),
])
def test_settings_out_of_range_are_refused_by_name(tmp_path, key, value):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, MINIMAL), {key: value})
    assert key in str(e.value) and "run.yaml" in str(e.value)


def test_settings_in_range_still_load(tmp_path):
    cfg = load_config(_write(tmp_path, MINIMAL), {
        "features.device": "cpu", "train.max_steps_per_epoch": 1, "eval.bootstrap": 0,
        "train.temporal_offset": 0, "eval.threshold": 0.3})
    assert cfg.features.device.value == "cpu" and cfg.train.max_steps_per_epoch == 1
