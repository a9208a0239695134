"""The recipe protocol and registry.

A recipe is one explicit class per pipeline (torchtune's recipe style): its config class (the
`recipe:` value selects it), `validate` (config and data, nothing written), `train` (adapter only)
and `run` (train → evaluate → summary → report). The CLI reads `RECIPES`; `tunesmith recipes`
lists it. Recipe modules are imported when first asked for, so `tunesmith --help` stays fast.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import ClassVar, Protocol

from tunesmith.config import RECIPE_CONFIGS, RunConfig
from tunesmith.errors import ConfigError


class Recipe(Protocol):
    name: ClassVar[str]  # the `recipe:` value
    summary: ClassVar[str]  # one line for `tunesmith recipes`
    config_class: ClassVar[type[RunConfig]]

    def validate(self, cfg: RunConfig) -> list[str]:
        """Check the config and every input it names; lines describing what a run would use."""
        ...

    def train(self, cfg: RunConfig, resume: bool = False) -> Path:
        """Train only; the adapter folder."""
        ...

    def run(self, cfg: RunConfig, resume: bool = False) -> dict:
        """The whole pipeline; the run's metrics (`passed` False when a threshold was missed)."""
        ...


# name → (module, class); the modules stay unimported until a recipe is used
_ENTRIES: dict[str, tuple[str, str]] = {
    "gsm8k": ("tunesmith.recipes.gsm8k", "Gsm8kRecipe"),
    "empathy": ("tunesmith.recipes.empathy", "EmpathyRecipe"),
    "sft": ("tunesmith.recipes.sft", "SftRecipe"),
    "dpo": ("tunesmith.recipes.dpo", "DpoRecipe"),
}
RECIPES = tuple(_ENTRIES)


def get_recipe(name: str) -> Recipe:
    if name not in _ENTRIES:
        raise ConfigError(f"unknown recipe '{name}' (one of: {', '.join(_ENTRIES)})")
    module, cls = _ENTRIES[name]
    recipe = getattr(importlib.import_module(module), cls)()
    if recipe.name != name or recipe.config_class is not RECIPE_CONFIGS[name]:
        raise AssertionError(f"recipe entry {name} does not match its class")  # a programming error, caught by tests
    return recipe


def recipe_for(cfg: RunConfig) -> Recipe:
    return get_recipe(cfg.recipe)
