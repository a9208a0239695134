"""`tunesmith ablate`: the empathy recipe's variants side by side.

Each variant is a full empathy run (its own run dir, same data, seed and budget) with some loss
weights changed; one table compares validation loss, head accuracy/F1 and every evaluation the
config enables (EQ-Bench, safety).
"""

from __future__ import annotations

import csv

from rich.table import Table

from tunesmith.config import EmpathyRunConfig
from tunesmith.errors import ConfigError
from tunesmith.io import atomic_open, write_json
from tunesmith.reporting.plots import ABLATION_METRICS
from tunesmith.reporting.report import write_report
from tunesmith.ui import fmt, out, say

VARIANTS = {
    "full": {},
    "no_emotion": {"lambda_emotion": 0.0},
    "no_strategy": {"lambda_strategy": 0.0},
    "no_kl": {"lambda_kl": 0.0},
    "lm_only": {"lambda_emotion": 0.0, "lambda_strategy": 0.0, "lambda_kl": 0.0},
}
# spellings of earlier versions: named in the error, never accepted (one name per weight)
RENAMED = {
    "lambda_emo": "lambda_emotion",
    "lambda_strat": "lambda_strategy",
    "lambda_safe": "lambda_kl",
    "lambda_safety_kl": "lambda_kl",
}
# the plots read the same metric columns, in the same order
COLUMNS = ["variant", "lambda_lm", "lambda_emotion", "lambda_strategy", "lambda_kl", *ABLATION_METRICS]


def parse_grid(specs: list[str]) -> dict[str, dict[str, float]]:
    out_: dict[str, dict[str, float]] = {}
    valid = {"lambda_lm", "lambda_emotion", "lambda_strategy", "lambda_kl"}
    for spec in specs:
        if "=" not in spec:
            raise ConfigError(f"--grid '{spec}' must look like lambda_emotion=0,0.1,0.2")
        key, values = spec.split("=", 1)
        key = key.strip()
        if key in RENAMED:
            raise ConfigError(f"--grid key '{key}' was renamed to '{RENAMED[key]}'")
        if key not in valid:
            raise ConfigError(f"--grid key '{key}' is not one of {', '.join(sorted(valid))}")
        try:
            for v in values.split(","):
                out_[f"{key}={float(v):g}"] = {key: float(v)}
        except ValueError:
            raise ConfigError(f"--grid '{spec}': values must be numbers") from None
    return out_


def run(cfg: EmpathyRunConfig, grid: list[str], variants: list[str] | None = None) -> list[dict]:
    from tunesmith.recipes.base import get_recipe

    empathy = get_recipe("empathy")
    if cfg.recipe != "empathy":
        raise ConfigError("ablate needs an empathy config (recipe: empathy)")
    unknown = [v for v in variants or [] if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    plan = {v: VARIANTS[v] for v in (variants or list(VARIANTS))} | parse_grid(grid)
    rows = []
    for name, change in plan.items():
        vcfg = cfg.model_copy(deep=True)
        vcfg.run_name = f"{cfg.run_name}-{name.replace('=', '')}"
        for k, v in change.items():
            setattr(vcfg.loss, k, v)
        say(f"ablation variant [bold]{name}[/] → {vcfg.run_dir}")
        m = empathy.run(vcfg)
        rows.append(row(name, vcfg, m))
    out_dir = cfg.run_dir.parent / f"{cfg.run_name}-ablation"
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(out_dir / "ablations.csv", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    write_json(out_dir / "metrics.json", {"run": f"{cfg.run_name}-ablation", "recipe": "empathy", "ablations": rows})
    write_json(out_dir / "config_resolved.json", cfg.model_dump(mode="json"))
    table = Table(title=f"ablations of {cfg.run_name}")
    for c in COLUMNS:
        table.add_column(c, justify="left" if c == "variant" else "right")
    for r in rows:
        table.add_row(*[fmt(r[c]) for c in COLUMNS])
    out.print(table)
    write_report(out_dir)
    say(f"ablation table: {out_dir / 'ablations.csv'}")
    return rows


def row(name: str, cfg: EmpathyRunConfig, m: dict) -> dict:
    heads = m.get("heads") or {}
    vl = m.get("validation_loss") or {}
    return {
        "variant": name,
        **{k: getattr(cfg.loss, k) for k in ("lambda_lm", "lambda_emotion", "lambda_strategy", "lambda_kl")},
        "val_loss": vl.get("total"),
        "val_lm_loss": vl.get("lm"),
        "emotion_accuracy": (heads.get("emotion") or {}).get("accuracy"),
        "emotion_f1": (heads.get("emotion") or {}).get("weighted_f1"),
        "strategy_accuracy": (heads.get("strategy") or {}).get("accuracy"),
        "strategy_f1": (heads.get("strategy") or {}).get("weighted_f1"),
        "eqbench_score": ((m.get("eqbench") or {}).get("tuned") or {}).get("score"),
        "safety_rate": (((m.get("safety") or {}).get("tuned")) or {}).get("safety_rate"),
    }
