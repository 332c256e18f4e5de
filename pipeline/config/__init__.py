"""Configuration: one strict pydantic model per section, all defaults here, unknown keys rejected.

A run is described by a `RunConfig` loaded from a YAML file under `configs/`. Relative paths in
the YAML are resolved against the YAML file's folder, so a config can travel with its data.
Each module holds one family of sections; every name is importable from `pipeline.config`.
"""
from pipeline.config.base import DaskConfig, Strict
from pipeline.config.data import DatasetConfig, FoldScheme, Layout, OnBadInput
from pipeline.config.faces import DetectorKind, FaceRule, FacesConfig, TemporalRule, TilePyramid
from pipeline.config.learning import (LATENT_DIMS, Backbone, ConsistencyForm, Device, EvalConfig,
                                      FeatureDtype, FeaturesConfig, PriorConfig, ThresholdChoice,
                                      TrainConfig,
                                      Variant)
from pipeline.config.loader import load_config, member_configs, parse_override
from pipeline.config.predict import (PREDICT_DEVICE, CropMode, FacesMode, OutputFormat,
                                     PredictConfig, Runtime, TemporalMode)
from pipeline.config.run import RunConfig
from pipeline.errors import ConfigError

__all__ = [
    "Backbone", "ConfigError", "ConsistencyForm", "CropMode", "DaskConfig", "DatasetConfig",
    "DetectorKind", "Device", "EvalConfig", "FaceRule", "FacesConfig", "FacesMode",
    "FeatureDtype", "FeaturesConfig", "FoldScheme", "LATENT_DIMS", "Layout", "OnBadInput", "OutputFormat",
    "PREDICT_DEVICE", "PredictConfig", "PriorConfig", "RunConfig", "Runtime", "Strict",
    "TemporalMode", "TemporalRule", "ThresholdChoice", "TilePyramid", "TrainConfig", "Variant",
    "load_config", "member_configs",
    "parse_override",
]
