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
    from tunesmith.recipes import empathy

    return empathy


@app.command()
def run(config: ConfigArg, smoke_test: Annotated[bool, typer.Option("--smoke-test", help="cap sizes: train 200 / eval 50 / safety 50")] = False,
        resume: Annotated[bool, typer.Option("--resume", help="continue from the latest checkpoint")] = False,
        set_: SetOpt = None):
    """Train → evaluate → safety → summary, as the config's recipe defines."""
    _quiet_libraries()
    cfg = _load(config, set_, smoke_test)
    result = _recipe(cfg).run(cfg, resume=resume)
    if result.get("passed") is False:
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
