"""The recipe registry.

A recipe is one pipeline (torchtune's recipe style): its config class (the `recipe:` value selects
it), `validate` (config and every input, nothing written), `train` (the adapter only) and `run`
(train → evaluate → summary → report). Each recipe module ends with `RECIPE = Recipe(...)` naming
its own functions; the CLI reads the registry below (`tunesmith recipes` lists it). Recipe modules
are imported when first asked for, so `tunesmith --help` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import RECIPE_CONFIGS, RunConfig
from tunesmith.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    name: str  # the `recipe:` value
    summary: str  # one line for `tunesmith recipes`
    config_class: type[RunConfig]
    validate: Callable[[RunConfig], list[str]]  # lines describing what a run would use
    train: Callable[..., Path]  # (cfg, resume=False) → the adapter folder
    run: Callable[..., dict]  # (cfg, resume=False) → the run's metrics (`passed` False: a threshold missed)


# name → the module holding its `RECIPE`
_MODULES: dict[str, str] = {
    "gsm8k": "tunesmith.recipes.gsm8k",
    "empathy": "tunesmith.recipes.empathy",
    "sft": "tunesmith.recipes.sft",
    "dpo": "tunesmith.recipes.dpo",
}
RECIPES = tuple(_MODULES)


def get_recipe(name: str) -> Recipe:
    if name not in _MODULES:
        raise ConfigError(f"unknown recipe '{name}' (one of: {', '.join(_MODULES)})")
    recipe = importlib.import_module(_MODULES[name]).RECIPE
    if recipe.name != name or recipe.config_class is not RECIPE_CONFIGS[name]:
        raise AssertionError(f"recipe entry {name} does not match its module")  # a programming error, caught by tests
    return recipe


def recipe_for(cfg: RunConfig) -> Recipe:
    return get_recipe(cfg.recipe)
