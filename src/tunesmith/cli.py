"""`tunesmith run | train | eval | report | models | validate | predict`."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tunesmith.errors import TunesmithError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fine-tune chat LLMs with LoRA and evaluate them for empathy, reasoning and safety.")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate a model (optionally with an adapter).")
app.add_typer(eval_app, name="eval")

ConfigArg = Annotated[Path, typer.Argument(help="YAML config, e.g. configs/gsm8k-simple.yaml")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a config key: --set training.epochs=2")]


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    # deprecation chatter from inside peft/transformers, not actionable by a user
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*|peft\..*")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _load(config: Path, overrides, smoke_test: bool = False):
    from tunesmith.config import load_config

    cfg = load_config(config, overrides)
    if smoke_test:
        cfg.apply_smoke_test()
    return cfg


def _recipe(cfg):
    if cfg.recipe == "gsm8k":
        from tunesmith.recipes import gsm8k

        return gsm8k
    if cfg.recipe == "sft":
        from tunesmith.recipes import sft

        return sft
    from tunesmith.recipes import empathy

    return empathy


@app.command()
def run(config: ConfigArg, smoke_test: Annotated[bool, typer.Option("--smoke-test", help="cap sizes: train 200 / eval 50 / safety 50")] = False,
        resume: Annotated[bool, typer.Option("--resume", help="continue from the latest checkpoint")] = False,
        check_thresholds: Annotated[bool, typer.Option("--check-thresholds", help="exit 1 when a preset threshold is missed")] = False,
        set_: SetOpt = None):
    """Train → evaluate → safety → summary → report, as the config's recipe defines."""
    _quiet_libraries()
    cfg = _load(config, set_, smoke_test)
    result = _recipe(cfg).run(cfg, resume=resume)
    if check_thresholds and result.get("passed") is False:
        raise typer.Exit(1)


@app.command()
def train(config: ConfigArg, smoke_test: Annotated[bool, typer.Option("--smoke-test")] = False,
          resume: Annotated[bool, typer.Option("--resume")] = False, set_: SetOpt = None):
    """Train only (no evaluation)."""
    _quiet_libraries()
    cfg = _load(config, set_, smoke_test)
    cfg.safety.enabled = False
    _recipe(cfg).train_only(cfg, resume=resume)


@app.command()
def validate(config: ConfigArg, set_: SetOpt = None):
    """Check a config and its data without training."""
    _quiet_libraries()
    cfg = _load(config, set_)
    report = _recipe(cfg).validate(cfg)
    for line in report:
        typer.echo(line)
    typer.echo("config and data OK")


@eval_app.command("eqbench")
def eval_eqbench(model: Annotated[str, typer.Argument(help="model reference, e.g. builtin:smollm2-135m-instruct")],
                 adapter: Annotated[Optional[Path], typer.Option("--adapter", help="LoRA adapter folder")] = None,
                 questions: Annotated[str, typer.Option(help="v2 questions JSON or hub id")] = "../shared/data/eqbench/eq_bench_v2_questions_171.json",
                 revise: Annotated[bool, typer.Option("--revise/--plain", help="prompt mode (plain: the harness default since v2.1)")] = False,
                 limit: Annotated[Optional[int], typer.Option(help="first N questions only (score not comparable)")] = None,
                 batch_size: int = 16, out: Annotated[Optional[Path], typer.Option(help="per-item JSONL")] = None):
    """EQ-Bench v2: score and parse rate of MODEL (plus --adapter)."""
    _quiet_libraries()
    from tunesmith.evaluation import eqbench
    from tunesmith.evaluation.generation import Generator
    from tunesmith.modeling.multitask import load_for_inference

    qs = eqbench.load_questions(questions)[:limit] if limit else eqbench.load_questions(questions)
    m, tok, _ = load_for_inference(adapter, model)
    gen = Generator(m, tok, batch_size)
    r = eqbench.run_eqbench(gen.chat, qs, out, revise=revise)
    typer.echo(f"EQ-Bench v2 ({'revise' if revise else 'plain'}) {model}{' + ' + str(adapter) if adapter else ''}: "
               f"score {r.score:.2f}, parsed {r.n_parsed}/{r.n_total} ({r.parse_rate:.1%}), "
               f"{'valid' if r.valid else 'INVALID (parse rate below the benchmark threshold)'}"
               f"{'' if r.n_total == eqbench.N_QUESTIONS else ' — subset, not comparable to published scores'}")


@app.command()
def predict(adapter: Annotated[Path, typer.Argument(help="adapter folder with heads (runs/<run>/adapter)")],
            message: Annotated[str, typer.Argument(help="a user message")],
            model: Annotated[Optional[str], typer.Option(help="base model (default: the one it was trained from)")] = None,
            top: int = 3):
    """Predicted emotion and strategy (with probabilities) for a message."""
    _quiet_libraries()
    from tunesmith.data.chat import encode
    from tunesmith.data.schema import Example
    from tunesmith.data.taxonomy import EMOTIONS, STRATEGIES
    from tunesmith.errors import ModelError
    from tunesmith.modeling.multitask import head_logits, load_for_inference

    m, tok, heads = load_for_inference(adapter, model)
    if heads is None:
        raise ModelError(f"{adapter} has no heads.safetensors (train with the empathy recipe)")
    feat = encode(tok, Example(messages=[{"role": "user", "content": message}]), 2048)
    logits = head_logits(m, heads, [feat], tok.pad_token_id)
    for head, names in (("emotion", EMOTIONS), ("strategy", STRATEGIES)):
        if head in logits:
            p = logits[head][0].softmax(-1)
            best = p.topk(min(top, len(names)))
            typer.echo(f"{head}: " + ", ".join(f"{names[i]} {v:.2f}" for v, i in zip(best.values.tolist(), best.indices.tolist())))


@app.command()
def ablate(config: ConfigArg,
           grid: Annotated[Optional[list[str]], typer.Option("--grid", help="e.g. --grid lambda_emotion=0,0.1,0.2")] = None,
           variants: Annotated[Optional[str], typer.Option(help="comma list of: full,no_emotion,no_strategy,no_safety_kl,lm_only")] = None,
           smoke_test: Annotated[bool, typer.Option("--smoke-test")] = False, set_: SetOpt = None):
    """Run the empathy ablations (and a λ grid) and write one comparison table."""
    _quiet_libraries()
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


def _register_plugins() -> None:
    # command groups that live beside their feature code
    from tunesmith.chat import commands as chat_commands
    from tunesmith.reporting import commands as report_commands

    chat_commands.register(app)
    report_commands.register(app)
    from tunesmith import dpo_commands

    dpo_commands.register(app)


_register_plugins()


def main() -> None:
    try:
        app()
    except TunesmithError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
