"""The benchmark registry: `tunesmith eval BENCH MODEL [--adapter DIR]`.

A benchmark is one recipe's evaluation step run on its own, so it takes its options from that
recipe's config sections (`--config`, `--set`) and writes the same files a recipe run writes
(`gsm8k_preds_<run>.jsonl`, `eqbench_<run>.jsonl`, `ailuminate_safety_<run>.jsonl`,
`{emotion,strategy}_preds_<run>.jsonl`, metrics.json) into runs/<run>/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import EvaluatedRunConfig, load_config, parse_config
from tunesmith.config.load import apply_override
from tunesmith.errors import ConfigError


@dataclass
class Target:
    """The model under evaluation."""

    model: object
    tokenizer: object
    heads: object | None
    generator: object


@dataclass(frozen=True)
class Benchmark:
    name: str
    recipe: str  # whose config sections hold the options
    summary: str
    limit_key: str  # the config key `--limit` sets
    evaluate: Callable[[EvaluatedRunConfig, Target], dict]


def _gsm8k(cfg, t: Target) -> dict:
    from tunesmith.recipes.gsm8k import evaluate_gsm8k, load_data

    _, _, test, pool, _ = load_data(cfg, cfg.run_dir)
    return evaluate_gsm8k(
        t.generator,
        test,
        pool,
        cfg.eval.k_shot,
        cfg.run_dir / f"gsm8k_preds_{cfg.run_name}.jsonl",
        cfg.eval.max_new_tokens,
    )


def _eqbench(cfg, t: Target) -> dict:
    from tunesmith.recipes.empathy import eqbench_eval

    return eqbench_eval(cfg, t.generator, cfg.run_dir / f"eqbench_{cfg.run_name}.jsonl")


def _ailuminate(cfg, t: Target) -> dict:
    from tunesmith.evaluation.ailuminate import evaluate_safety, load_prompts
    from tunesmith.recipes.common import build_guard

    guard = build_guard(cfg, cfg.model.name)
    prompts = load_prompts(cfg.safety.prompts, cfg.safety.limit, cfg.training.seed)
    summary, _ = evaluate_safety(
        t.generator, guard, prompts, cfg.safety.max_new_tokens, cfg.run_dir / f"ailuminate_safety_{cfg.run_name}.jsonl"
    )
    return {**summary, "guard": guard.label}


def _heads(cfg, t: Target) -> dict:
    from tunesmith.data.chat import pad_token_id
    from tunesmith.recipes.empathy import encode_heldout, head_eval, load_sources

    if t.heads is None:
        raise ConfigError("the heads benchmark needs an adapter with heads.safetensors (--adapter runs/<run>/adapter)")
    _, held = load_sources(cfg)
    return head_eval(
        cfg, t.model, t.heads, held, encode_heldout(cfg, t.tokenizer, held), pad_token_id(t.tokenizer), cfg.run_dir
    )


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "gsm8k",
            "gsm8k",
            "GSM8K test, greedy k-shot; lm-eval strict-match and flexible-extract accuracy",
            "data.gsm8k.limit_test",
            _gsm8k,
        ),
        Benchmark(
            "eqbench", "empathy", "EQ-Bench v2 (exact scorer): score and parse rate", "eval.eqbench.limit", _eqbench
        ),
        Benchmark(
            "ailuminate",
            "gsm8k",
            "AILuminate prompts judged by the guard (safety.guard): safety rate by hazard",
            "safety.limit",
            _ailuminate,
        ),
        Benchmark(
            "heads",
            "empathy",
            "emotion/strategy heads on GoEmotions dev / ESConv validation: accuracy, F1",
            "data.empathy.limit_eval",
            _heads,
        ),
    )
}


def benchmark_config(
    name: str, model_ref: str, config: Path | None, overrides: list[str], limit: int | None
) -> EvaluatedRunConfig:
    """The config a benchmark runs under: `config` (or the recipe's defaults) with the model set
    and training off."""
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark '{name}' (one of: {', '.join(BENCHMARKS)}; see `tunesmith eval --list`)")
    b = BENCHMARKS[name]
    sets = [*overrides, f"model.name={model_ref}", "training.enabled=false"]
    if limit is not None:
        sets.append(f"{b.limit_key}={limit}")
    if config is not None:
        cfg = load_config(config, sets)
    else:
        data: dict = {"recipe": b.recipe, "run_name": f"eval-{name}"}
        for s in sets:
            apply_override(data, s)
        cfg = parse_config(data, f"tunesmith eval {name}")
    if cfg.recipe != b.recipe:
        raise ConfigError(f"{config}: the {name} benchmark takes a {b.recipe} config (got recipe: {cfg.recipe})")
    return cfg


def run_benchmark(name: str, cfg: EvaluatedRunConfig, adapter: Path | None) -> dict:
    from tunesmith.io import write_json
    from tunesmith.modeling.loading import load_for_inference, load_run_model, load_run_tokenizer
    from tunesmith.recipes.common import chat_template_record, check_inputs, eval_generator
    from tunesmith.runs import start_run

    check_inputs(cfg)
    if adapter is None:  # the config's own chat template settings, revision and dtype
        model, tok, heads = load_run_model(cfg).eval(), load_run_tokenizer(cfg), None
    else:  # the adapter talks through the template its run was trained with
        model, tok, heads = load_for_inference(adapter, cfg.model.name, cfg.model.dtype, cfg.model.trust_remote_code)
    start_run(cfg, chat_template_record(cfg))
    gen = eval_generator(cfg, model, tok, adapter)
    metrics = {
        "benchmark": name,
        "model": cfg.model.name,
        "adapter": str(adapter) if adapter else None,
        name: BENCHMARKS[name].evaluate(cfg, Target(model, tok, heads, gen)),
    }
    write_json(cfg.run_dir / "metrics.json", metrics)
    return metrics
