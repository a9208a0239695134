"""Pieces every recipe shares: run directory, provenance, model + LoRA, generators, guard."""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import os
import subprocess
import warnings
from pathlib import Path

from rich.console import Console

from tunesmith.config import Config
from tunesmith.io import require_file, write_json

console = Console(stderr=True, soft_wrap=True)  # progress and messages; no wrapping of paths in logs
out = Console()  # results tables


def is_main_process() -> bool:
    """False in the non-zero ranks of an `accelerate launch` (RANK is set by every launcher it uses)."""
    return int(os.environ.get("RANK", "0")) == 0


def say(msg: str) -> None:
    console.print(f"[bold cyan]tunesmith[/] {msg}")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    versions = {}
    for pkg in ("tunesmith", "torch", "transformers", "peft", "trl", "accelerate", "datasets"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"git_commit": git_commit(), "versions": versions, "started_at": dt.datetime.now().isoformat(timespec="seconds")}


def check_inputs(cfg: Config) -> None:
    """Fail before anything is written: missing files must not leave a half-made run dir."""
    from tunesmith.data.chat import render, with_system
    from tunesmith.modeling.loading import load_tokenizer, resolve

    resolve(cfg.model.name)
    # the tokenizer and a chat template that takes every role the run uses (system prompt, user,
    # assistant): an unknown hub id or a template that rejects a role fails here
    tok = load_tokenizer(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code, cfg.model.chat_template_kwargs)
    render(tok, with_system([{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hi."}],
                            cfg.data.system_prompt))
    if cfg.safety.enabled:
        from tunesmith.evaluation.safety import load_categories, load_prompts

        require_file(cfg.safety.prompts, "safety prompt file (safety.prompts)")
        load_prompts(cfg.safety.prompts)  # every row parsed now: a bad CSV must not fail after training
        if cfg.safety.guard.model != "self":
            resolve(cfg.safety.guard.model)
            load_tokenizer(cfg.safety.guard.model, trust_remote_code=cfg.model.trust_remote_code)
        if cfg.safety.guard.guidelines:
            require_file(cfg.safety.guard.guidelines, "safety guidelines file (safety.guard.guidelines)")
        if cfg.safety.guard.categories:
            require_file(cfg.safety.guard.categories, "guard categories file (safety.guard.categories)")
            load_categories(cfg.safety.guard.categories)


def start_run(cfg: Config) -> Path:
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config_resolved.json", {**cfg.model_dump(mode="json"), "provenance": provenance()})
    return run_dir


def build_model(cfg: Config, with_lora: bool = True):
    from tunesmith.modeling.loading import add_lora, load_model, load_tokenizer

    tok = load_tokenizer(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code, cfg.model.chat_template_kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_model(cfg.model.name, cfg.model.dtype, cfg.model.load_in_4bit, cfg.model.revision,
                           cfg.model.trust_remote_code, cfg.model.attn_implementation)
    for w in caught:
        if "QLoRA" in str(w.message):
            say(f"[yellow]warning:[/] {w.message}")
    if with_lora:
        from transformers import set_seed

        # LoRA and head initialisation draw from the global RNG: seed it so a config reruns identically
        set_seed(cfg.training.seed)
        model = add_lora(model, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules,
                         cfg.training.gradient_checkpointing)
    return model, tok


def build_guard(cfg: Config, base_model_ref: str):
    """The guard from safety.guard; "self" = the evaluated base model prompted as a guard."""
    from tunesmith.evaluation.generation import Generator
    from tunesmith.evaluation.safety import ClassifierGuard, GenerativeGuard, load_categories, load_guidelines
    from tunesmith.modeling.loading import load_model, load_tokenizer

    g = cfg.safety.guard
    ref = base_model_ref if g.model == "self" else g.model
    label = f"{ref} prompted as guard (not a trained safety classifier)" if g.model == "self" else ref
    guidelines = load_guidelines(g.guidelines)
    tok = load_tokenizer(ref, trust_remote_code=cfg.model.trust_remote_code,
                         template_vars=cfg.model.chat_template_kwargs if g.model == "self" else None)
    if g.kind == "classifier":
        from transformers import AutoModelForSequenceClassification

        model = load_model(ref, cfg.model.dtype, model_class=AutoModelForSequenceClassification,
                           trust_remote_code=cfg.model.trust_remote_code)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tok.pad_token_id
        return ClassifierGuard(model, tok, guidelines, label, g.batch_size)
    model = load_model(ref, cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
    gen = Generator(model, tok, batch_size=g.batch_size, max_new_tokens=g.max_new_tokens)
    return GenerativeGuard(gen, load_categories(g.categories), guidelines, label)


def fmt(x, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)
