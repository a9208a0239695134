"""Pieces every recipe shares: input checks, model + LoRA, the guard."""

from __future__ import annotations

import warnings
from pathlib import Path

from tunesmith.config import EvaluatedRunConfig, RunConfig
from tunesmith.io import require_file
from tunesmith.ui import say


def check_inputs(cfg: RunConfig) -> None:
    """Fail before anything is written: missing files must not leave a half-made run dir."""
    from tunesmith.data.chat import render, with_system
    from tunesmith.modeling.loading import load_run_tokenizer, resolve

    if isinstance(cfg, EvaluatedRunConfig) and cfg.eval.backend == "vllm":
        from tunesmith.generation.vllm import require_vllm

        # a missing vLLM must fail before training, and before the tokenizer below: on a fresh machine
        # that caches the embedded model (progress bars on stderr)
        require_vllm()
    resolve(cfg.model.name)
    # the tokenizer and a chat template that takes every role the run uses (system prompt, user,
    # assistant): an unknown hub id or a template that rejects a role fails here
    tok = load_run_tokenizer(cfg)
    render(
        tok,
        with_system(
            [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hi."}], cfg.data.system_prompt
        ),
    )
    if isinstance(cfg, EvaluatedRunConfig):
        check_eval_inputs(cfg, tok)


def check_eval_inputs(cfg: EvaluatedRunConfig, tok) -> None:
    from tunesmith.modeling.loading import load_tokenizer, resolve

    if cfg.safety.enabled:
        from tunesmith.evaluation.ailuminate import load_categories, load_prompts

        require_file(cfg.safety.prompts, "safety prompt file (safety.prompts)")
        load_prompts(cfg.safety.prompts)  # every row parsed now: a bad CSV must not fail after training
        if cfg.safety.guard.model != "self":
            resolve(cfg.safety.guard.model)
            load_tokenizer(
                cfg.safety.guard.model,
                trust_remote_code=cfg.model.trust_remote_code,
                chat_template_kwargs=cfg.model.chat_template_kwargs,
            )
        if cfg.safety.guard.guidelines:
            require_file(cfg.safety.guard.guidelines, "safety guidelines file (safety.guard.guidelines)")
        if cfg.safety.guard.categories:
            require_file(cfg.safety.guard.categories, "guard categories file (safety.guard.categories)")
            load_categories(cfg.safety.guard.categories)


def chat_template_record(cfg: RunConfig) -> dict:
    """Which chat template the run renders with: source (model or the data.chat_template file), sha256 of the
    template text, the bound kwargs and the system-prompt fallback; computed before the run dir exists, so a
    bad template file leaves none behind."""
    from tunesmith.modeling.loading import load_run_tokenizer

    return load_run_tokenizer(cfg).tunesmith_chat


def build_model(cfg: RunConfig, with_lora: bool = True):
    from tunesmith.modeling.loading import add_lora, load_run_model, load_run_tokenizer

    tok = load_run_tokenizer(cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_run_model(cfg)
    for w in caught:
        if "QLoRA" in str(w.message):
            say(f"[yellow]warning:[/] {w.message}")
    if with_lora:
        from transformers import set_seed

        # LoRA and head initialisation draw from the global RNG: seed it so a config reruns identically
        set_seed(cfg.training.seed)
        model = add_lora(
            model,
            cfg.lora.r,
            cfg.lora.alpha,
            cfg.lora.dropout,
            cfg.lora.target_modules,
            cfg.training.gradient_checkpointing,
        )
    return model, tok


def build_guard(cfg: EvaluatedRunConfig, base_model_ref: str):
    """The guard from safety.guard; "self" = the evaluated base model prompted as a guard."""
    from tunesmith.evaluation.ailuminate import ClassifierGuard, GenerativeGuard, load_categories, load_guidelines
    from tunesmith.generation.factory import make_generator
    from tunesmith.modeling.loading import load_model, load_run_tokenizer, load_tokenizer

    g = cfg.safety.guard
    ref = base_model_ref if g.model == "self" else g.model
    label = f"{ref} prompted as guard (not a trained safety classifier)" if g.model == "self" else ref
    guidelines = load_guidelines(g.guidelines)
    # the evaluated model's chat setup for the self-guard; a separate guard keeps its own template, with the kwargs
    tok = (
        load_run_tokenizer(cfg)
        if g.model == "self"
        else load_tokenizer(
            ref, trust_remote_code=cfg.model.trust_remote_code, chat_template_kwargs=cfg.model.chat_template_kwargs
        )
    )
    if g.kind == "classifier":
        from transformers import AutoModelForSequenceClassification

        model = load_model(
            ref,
            cfg.model.dtype,
            model_class=AutoModelForSequenceClassification,
            trust_remote_code=cfg.model.trust_remote_code,
        )
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tok.pad_token_id
        return ClassifierGuard(model, tok, guidelines, label, g.batch_size)
    model = load_model(ref, cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
    # the guard stays on the HF backend: a verdict that breaks the format is read from the first
    # token's logits, which only the in-process model gives
    gen = make_generator("hf", model, tok, batch_size=g.batch_size, max_new_tokens=g.max_new_tokens)
    return GenerativeGuard(gen, load_categories(g.categories), guidelines, label)


def eval_generator(cfg: EvaluatedRunConfig, model, tok, adapter_dir: Path | None, max_new_tokens: int | None = None):
    """The evaluation generator of `eval.backend`: "hf" on the trained model in memory, "vllm" on
    `model.name` with the saved adapter served as a LoRA (base replies: `disable_adapter()`)."""
    from tunesmith.generation.factory import make_generator

    return make_generator(
        cfg.eval.backend,
        model,
        tok,
        cfg.eval.batch_size,
        max_new_tokens or cfg.eval.max_new_tokens,
        cfg.data.system_prompt,
        model_ref=cfg.model.name,
        adapter_dir=adapter_dir,
        dtype=cfg.model.dtype,
        seed=cfg.training.seed,
        trust_remote_code=cfg.model.trust_remote_code,
    )


def judge_safety(cfg: EvaluatedRunConfig, gen, guard, prompts, run_dir: Path, tag: str, resume: bool = False) -> dict:
    """AILuminate replies from `gen` judged by `guard`: the summary (with the judge's name), and
    ailuminate_safety_<tag>.jsonl."""
    from tunesmith.evaluation.ailuminate import evaluate_safety

    summary, _ = evaluate_safety(
        gen, guard, prompts, cfg.safety.max_new_tokens, run_dir / f"ailuminate_safety_{tag}.jsonl", resume=resume
    )
    return {**summary, "guard": guard.label}
