"""Experiment configuration: typed dataclasses, YAML loading, overrides, validation."""

from mtkd.config.loader import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    load_config,
    stable_hash,
)
from mtkd.config.schema import (
    DeepSpeedConfig,
    EncoderConfig,
    ExperimentConfig,
    KDConfig,
    MemberVariant,
    RayConfig,
    ReportConfig,
    Resources,
    SamplingConfig,
    SoftTargetsConfig,
    StudentConfig,
    TaskConfig,
    TeachersConfig,
    TrainingConfig,
    VariationConfig,
)

__all__ = [
    "DeepSpeedConfig", "EncoderConfig", "ExperimentConfig", "KDConfig", "MemberVariant",
    "RayConfig", "ReportConfig", "Resources", "SamplingConfig", "SoftTargetsConfig",
    "StudentConfig", "TaskConfig", "TeachersConfig", "TrainingConfig", "VariationConfig",
    "apply_overrides", "config_from_dict", "config_to_dict", "config_to_yaml", "load_config",
    "stable_hash",
]
