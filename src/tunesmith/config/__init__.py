"""Typed run configuration: one YAML file drives a whole run (data → model → train → evaluate →
report). `sections.py` holds what every recipe shares, `recipes.py` each recipe's own sections,
`load.py` the reading and its error messages."""

from tunesmith.config.load import apply_override, config_class, load_config, parse_config
from tunesmith.config.recipes import (
    RECIPE_CONFIGS,
    DpoConfig,
    DpoRunConfig,
    EmpathyRunConfig,
    Gsm8kRunConfig,
    HeadsConfig,
    LossConfig,
    SftRunConfig,
)
from tunesmith.config.sections import (
    DEFAULT_MODEL,
    EvalConfig,
    EvaluatedRunConfig,
    GuardConfig,
    LoraConfig,
    ModelConfig,
    RunConfig,
    SafetyConfig,
    Scheduler,
    TrainingConfig,
)

__all__ = [
    "DEFAULT_MODEL",
    "RECIPE_CONFIGS",
    "DpoConfig",
    "DpoRunConfig",
    "EmpathyRunConfig",
    "EvalConfig",
    "EvaluatedRunConfig",
    "Gsm8kRunConfig",
    "GuardConfig",
    "HeadsConfig",
    "LoraConfig",
    "LossConfig",
    "ModelConfig",
    "RunConfig",
    "SafetyConfig",
    "Scheduler",
    "SftRunConfig",
    "TrainingConfig",
    "apply_override",
    "config_class",
    "load_config",
    "parse_config",
]
