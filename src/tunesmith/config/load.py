"""Reading a run config: YAML file → `--set` overrides → the recipe's config class, with one-line
errors that name the file and key (and the closest valid key, or the new name of a renamed one)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunesmith.config.recipes import RECIPE_CONFIGS
from tunesmith.config.sections import RunConfig
from tunesmith.errors import ConfigError

DEFAULT_RECIPE = "gsm8k"

# keys of earlier versions → their name now (a config using the old one gets told the new one)
RENAMED = {
    "loss.lambda_safety_kl": "loss.lambda_kl",
    "data.empathy.safety_prompts": "data.empathy.kl_prompts",
    "data.empathy.safety_response_tokens": "data.empathy.kl_response_tokens",
    "dpo.max_length": "data.max_length",
    **{
        f"dpo.{k}": f"training.{k}"
        for k in (
            "learning_rate",
            "batch_size",
            "grad_accum",
            "epochs",
            "max_steps",
            "warmup_ratio",
            "scheduler",
            "max_grad_norm",
            "gradient_checkpointing",
            "seed",
            "logging_steps",
        )
    },
}


def _section_class(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The section class at `loc` (the parent of the failing key), or None."""
    cur: Any = model
    for part in loc:
        field = cur.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        cur = field.annotation
    return cur


def _owners(key: str) -> list[str]:
    """The recipes whose config has this dotted key."""
    parts = key.split(".")
    return [
        name
        for name, cls in RECIPE_CONFIGS.items()
        if (sec := _section_class(cls, tuple(parts[:-1]))) is not None and parts[-1] in sec.model_fields
    ]


def _format_error(err: dict, source: str, cls: type[RunConfig]) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    recipe = cls.model_fields["recipe"].default
    if err["type"] == "extra_forbidden":
        if key in RENAMED:
            return f"{source}: config key '{key}' was renamed to '{RENAMED[key]}'"
        sec = _section_class(cls, loc[:-1])
        valid = list(sec.model_fields) if sec else []
        owners = _owners(key)
        if owners:
            names = owners[0] if len(owners) == 1 else f"{', '.join(owners[:-1])} and {owners[-1]}"
            return (
                f"{source}: config key '{key}' belongs to the {names} recipe{'s' if len(owners) > 1 else ''}, "
                f"not {recipe} (valid here: {', '.join(valid)})"
            )
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"; did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else ""
        return f"{source}: unknown config key '{key}'{hint} (valid here: {', '.join(valid)})"
    msg = err["msg"]
    if err["type"] == "value_error":
        return f"{source}: {msg.removeprefix('Value error, ')}"
    return f"{source}: config key '{key}': {msg} (got {err.get('input')!r})"


def config_class(recipe: Any, source: str = "config") -> type[RunConfig]:
    cls = RECIPE_CONFIGS.get(recipe) if isinstance(recipe, str) else None
    if cls is None:
        raise ConfigError(
            f"{source}: config key 'recipe': unknown recipe {recipe!r} "
            f"(one of: {', '.join(RECIPE_CONFIGS)}; see `tunesmith recipes`)"
        )
    return cls


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """The config of `data['recipe']` (default gsm8k), validated by that recipe's class."""
    cls = config_class(data.get("recipe", DEFAULT_RECIPE), source)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e.errors()[0], source, cls)) from None


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config; relative data paths stay relative to the working directory.

    `overrides` are `dotted.key=value` strings (value parsed as YAML), applied before validation.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ConfigError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    for ov in overrides or []:
        apply_override(data, ov)
    return parse_config(data, str(p))


def apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like key.sub=value")
    key, raw = override.split("=", 1)
    cur = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"override '{override}': '{part}' is not a section")
    cur[parts[-1]] = yaml.safe_load(raw)
