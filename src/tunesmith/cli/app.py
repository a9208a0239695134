"""`tunesmith run | train | validate | recipes | eval | predict | ablate | models` (+ chat, report and preference groups)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tunesmith.errors import TunesmithError
from tunesmith.ui import quiet_libraries

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune chat LLMs with LoRA and evaluate them for empathy, reasoning and safety.",
)

ConfigArg = Annotated[Path, typer.Argument(help="YAML config, e.g. configs/gsm8k-simple.yaml")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a config key: --set training.epochs=2")]


def _load(config: Path, overrides, smoke_test: bool = False):
    from tunesmith.config import load_config

    cfg = load_config(config, overrides)
    if smoke_test:
        cfg.apply_smoke_test()
    return cfg


def _recipe(cfg):
    from tunesmith.recipes.base import recipe_for

    return recipe_for(cfg)


@app.command()
def run(
    config: ConfigArg,
    smoke_test: Annotated[
        bool, typer.Option("--smoke-test", help="cap sizes: train 200 / eval 50 / safety 50")
    ] = False,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the latest checkpoint")] = False,
    check_thresholds: Annotated[
        bool, typer.Option("--check-thresholds", help="exit 1 when a preset threshold is missed")
    ] = False,
    set_: SetOpt = None,
):
    """Train → evaluate → safety → summary → report, as the config's recipe defines."""
    quiet_libraries()
    cfg = _load(config, set_, smoke_test)
    result = _recipe(cfg).run(cfg, resume=resume)
    if check_thresholds and result.get("passed") is False:
        raise typer.Exit(1)


@app.command()
def train(
    config: ConfigArg,
    smoke_test: Annotated[bool, typer.Option("--smoke-test")] = False,
    resume: Annotated[bool, typer.Option("--resume")] = False,
    set_: SetOpt = None,
):
    """Train only (no evaluation)."""
    quiet_libraries()
    from tunesmith.config import EvaluatedRunConfig

    cfg = _load(config, set_, smoke_test)
    if isinstance(cfg, EvaluatedRunConfig):
        cfg.safety.enabled = False  # no evaluation follows, so its inputs are not checked
    _recipe(cfg).train(cfg, resume=resume)


@app.command()
def validate(config: ConfigArg, set_: SetOpt = None):
    """Check a config and its data without training."""
    quiet_libraries()
    cfg = _load(config, set_)
    report = _recipe(cfg).validate(cfg)
    for line in report:
        typer.echo(line)
    typer.echo("config and data OK")


@app.command()
def recipes():
    """List the recipes a config's `recipe:` can name."""
    from tunesmith.recipes.base import RECIPES, get_recipe

    for name in RECIPES:
        typer.echo(f"{name:<10} {get_recipe(name).summary}")


def _list_benchmarks(value: bool):
    if value:
        from tunesmith.recipes.benchmarks import BENCHMARKS

        for b in BENCHMARKS.values():
            typer.echo(
                f"{b.name:<11} {b.summary} (options: the {b.recipe} recipe's config; --limit sets {b.limit_key})"
            )
        raise typer.Exit()


@app.command("eval")
def eval_(
    benchmark: Annotated[str | None, typer.Argument(help="gsm8k | eqbench | ailuminate | heads (see --list)")] = None,
    model: Annotated[str | None, typer.Argument(help="model reference, e.g. builtin:smollm2-135m-instruct")] = None,
    adapter: Annotated[Path | None, typer.Option("--adapter", help="LoRA adapter folder (runs/<run>/adapter)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="take the options from this recipe config")] = None,
    limit: Annotated[
        int | None, typer.Option(help="first N items only (scores not comparable to published ones)")
    ] = None,
    list_: Annotated[
        bool, typer.Option("--list", callback=_list_benchmarks, is_eager=True, help="list the benchmarks and exit")
    ] = False,
    set_: SetOpt = None,
):
    """Score MODEL (plus --adapter) on one benchmark, with a recipe's options and output files."""
    quiet_libraries()
    from tunesmith.errors import ConfigError
    from tunesmith.recipes.benchmarks import benchmark_config, run_benchmark
    from tunesmith.ui import say

    if benchmark is None or model is None:
        raise ConfigError("usage: tunesmith eval BENCHMARK MODEL [--adapter DIR] (tunesmith eval --list)")
    cfg = benchmark_config(benchmark, model, config, set_ or [], limit)
    m = run_benchmark(benchmark, cfg, adapter)
    r = m[benchmark]
    shown = {k: v for k, v in r.items() if isinstance(v, (int, float, str, bool)) or v is None}
    typer.echo(
        f"{benchmark} {model}{' + ' + str(adapter) if adapter else ''}: "
        + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
    )
    say(f"outputs in {cfg.run_dir}")


@app.command()
def predict(
    adapter: Annotated[Path, typer.Argument(help="adapter folder with heads (runs/<run>/adapter)")],
    message: Annotated[str, typer.Argument(help="a user message")],
    model: Annotated[str | None, typer.Option(help="base model (default: the one it was trained from)")] = None,
    top: int = 3,
):
    """Predicted emotion and strategy (with probabilities) for a message."""
    quiet_libraries()
    from tunesmith.data.chat import encode, pad_token_id
    from tunesmith.data.schema import Example
    from tunesmith.data.taxonomy import EMOTIONS, STRATEGIES
    from tunesmith.errors import ModelError
    from tunesmith.modeling.forward import head_logits
    from tunesmith.modeling.loading import load_for_inference

    m, tok, heads = load_for_inference(adapter, model)
    if heads is None:
        raise ModelError(f"{adapter} has no heads.safetensors (train with the empathy recipe)")
    feat = encode(tok, Example(messages=[{"role": "user", "content": message}]), 2048)
    logits = head_logits(m, heads, [feat], pad_token_id(tok))
    for head, names in (("emotion", EMOTIONS), ("strategy", STRATEGIES)):
        if head in logits:
            p = logits[head][0].softmax(-1)
            best = p.topk(min(top, len(names)))
            typer.echo(
                f"{head}: "
                + ", ".join(f"{names[i]} {v:.2f}" for v, i in zip(best.values.tolist(), best.indices.tolist()))
            )


@app.command()
def ablate(
    config: ConfigArg,
    grid: Annotated[list[str] | None, typer.Option("--grid", help="e.g. --grid lambda_emotion=0,0.1,0.2")] = None,
    variants: Annotated[
        str | None, typer.Option(help="comma list of: full,no_emotion,no_strategy,no_kl,lm_only")
    ] = None,
    smoke_test: Annotated[bool, typer.Option("--smoke-test")] = False,
    set_: SetOpt = None,
):
    """Run the empathy ablations (and a λ grid) and write one comparison table."""
    quiet_libraries()
    from tunesmith.recipes import ablation

    cfg = _load(config, set_, smoke_test)
    ablation.run(cfg, grid or [], variants.split(",") if variants else None)


@app.command()
def models():
    """List the built-in models and the other accepted model references."""
    from rich.console import Console
    from rich.table import Table

    from tunesmith.modeling.loading import BUILTINS, cache_root

    t = Table(title="built-in models")
    for c in ("reference", "description", "cached"):
        t.add_column(c)
    for b in BUILTINS.values():
        cached = (cache_root() / "models" / b.name / "config.json").is_file()
        t.add_row(f"builtin:{b.name}", b.description, "yes" if cached else "on first use")
    Console().print(t)
    typer.echo("Also accepted: a hub id (org/name), a local Hugging Face folder, or a path to a .gguf file.")


def _register_command_groups() -> None:
    from tunesmith.cli import chat, preference, report

    chat.register(app)
    report.register(app)
    preference.register(app, run)


_register_command_groups()


def main() -> None:
    try:
        app()
    except TunesmithError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
