"""SFT recipe: LoRA on any chat data (messages / ShareGPT / Alpaca / prompt-completion), with
validation loss on a schedule, the best checkpoint as adapter/, early stopping, trackers, a model card.

Outputs in runs/<run>/: config_resolved.json, checkpoints/ (+ checkpoints/best), adapter/ (+ README.md
model card), training_history.json, validation_history.json, tensorboard/<run>/ (report_to), metrics.json;
plus one row in results/summary.csv.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from tunesmith.config import SftRunConfig
from tunesmith.data.chat import IGNORE
from tunesmith.recipes.base import Recipe
from tunesmith.recipes.common import (
    build_guard,
    build_model,
    chat_template_record,
    check_inputs,
    eval_generator,
    judge_safety,
)
from tunesmith.reporting.report import write_report
from tunesmith.runs import append_summary_row, is_main_process, start_run, summary_row
from tunesmith.ui import fmt, out, say


def _load(cfg: SftRunConfig, tok):
    from tunesmith.data.sources.sft import load_sft

    return load_sft(cfg, tok, say)


def _describe(splits) -> str:
    val = f"{len(splits.validation)} validation ({splits.validation_ref})" if splits.validation else "no validation"
    drop = f"; {splits.dropped} dropped (no reply token within data.max_length)" if splits.dropped else ""
    return f"{len(splits.train)} train / {val} examples, format {splits.format}{drop}"


def _trainer(cfg: SftRunConfig, model, tok, splits, run_dir: Path):
    from tunesmith.training.trainer import Trainer

    return Trainer(
        model,
        tok,
        cfg.training,
        lambda epoch: splits.train,
        run_dir,
        log=say,
        validation=splits.validation,
        eval_batch_size=cfg.eval.batch_size,
        pack_length=cfg.data.max_length,
        run_name=cfg.run_name,
        tracker_config=cfg.model_dump(mode="json"),
    )


def _train(cfg: SftRunConfig, resume: bool):
    check_inputs(cfg)
    from tunesmith.modeling.loading import load_run_tokenizer

    tok = load_run_tokenizer(cfg)
    splits = _load(cfg, tok)  # every record parsed and encoded before the run dir exists
    run_dir = start_run(cfg, chat_template_record(cfg))
    say(f"run [bold]{cfg.run_name}[/]: {_describe(splits)} from {splits.train_ref}")
    model, tok = build_model(cfg)
    metrics: dict = {
        "run": cfg.run_name,
        "recipe": "sft",
        "format": splits.format,
        "train_examples": len(splits.train),
        "validation_examples": len(splits.validation),
    }
    trainer = _trainer(cfg, model, tok, splits, run_dir)
    val: dict = {}
    if splits.validation and not resume:
        # the adapter starts as the identity (LoRA B = 0): this is the base model's validation loss
        val["base"] = trainer.validation_loss()[0]
        say(f"validation loss before training {val['base']:.4f}")
    if cfg.training.enabled:
        st = trainer.train(resume=resume)
        last = st.history[-min(len(st.history), cfg.training.logging_steps * 10) :] if st.history else []
        metrics["train"] = {
            "steps": st.step,
            "tokens": st.history[-1]["tokens"] if st.history else 0,
            "final_loss": sum(r["loss"] for r in last) / len(last) if last else None,
            "packing": cfg.training.packing,
        }
        if st.evals:
            val |= {
                "first": st.evals[0]["loss"],
                "first_step": st.evals[0]["step"],
                "best": st.best_loss,
                "best_step": st.best_step,
                "final": st.evals[-1]["loss"],
                "evaluations": len(st.evals),
                "stopped_early": st.stopped_early,
                "adapter_step": st.best_step if cfg.training.load_best else st.step,
            }
    elif splits.validation:
        val["final"] = val.get("base")
    if val:
        metrics["validation"] = val
    return run_dir, trainer, splits, metrics


def _finish(cfg: SftRunConfig, run_dir: Path, splits, metrics: dict) -> dict:
    from tunesmith.io import write_json
    from tunesmith.reporting.model_card import metrics_data, write_model_card

    write_json(run_dir / "metrics.json", metrics)
    adapter = run_dir / "adapter"
    if (adapter / "adapter_config.json").is_file():
        card = {k: metrics[k] for k in ("train", "validation") if k in metrics}
        write_model_card(adapter, cfg, card, metrics_data(cfg.model_dump(mode="json")))
    t = cfg.training
    append_summary_row(
        cfg.summary_csv,
        summary_row(
            cfg,
            data=splits.train_ref,
            train_examples=len(splits.train),
            checkpoint="adapter" if t.enabled else None,
        ),
    )
    v, tr = metrics.get("validation", {}), metrics.get("train", {})
    table = Table(title=f"tunesmith · {cfg.run_name} (sft, {splits.format})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, val in (
        ("training steps", tr.get("steps")),
        ("train loss (last steps)", tr.get("final_loss")),
        ("validation loss, base model", v.get("base")),
        (f"validation loss, first eval (step {v.get('first_step')})", v.get("first")),
        (f"validation loss, best (step {v.get('best_step')})", v.get("best")),
        ("validation loss, last eval", v.get("final")),
        ("stopped early", v.get("stopped_early")),
    ):
        if val is not None:
            table.add_row(label, fmt(val, 4))
    safety, base_safety = metrics.get("safety"), metrics.get("base_safety") or {}
    if safety:
        table.add_row(
            f"safety rate, base model ({safety['total']} AILuminate prompts)", fmt(base_safety.get("safety_rate"))
        )
        table.add_row(f"safety rate, tuned ({safety['total']} AILuminate prompts)", fmt(safety["safety_rate"]))
    out.print(table)
    if safety:
        say(f"safety judge: {safety['guard']}")
    for row in metrics.get("samples") or []:
        out.print(f"[bold]{row['scenario']}[/]: …{row['prompt'][-160:]!r}")
        for side in ("base", "tuned"):
            if side in row:
                out.print(f"  [dim]{side:<5}:[/] {row[side][:240]!r}")
    _, html = write_report(run_dir)
    say(f"report: {html.resolve()} (opens from disk)")
    say(f"outputs in {run_dir}; adapter + model card in {adapter}; summary row in {cfg.summary_csv}")
    return metrics


def validation_samples(cfg: SftRunConfig, gen, tok, splits) -> list[dict]:
    """The first `eval.samples` validation conversations, answered after training by the tuned model and
    (`eval.evaluate_base`) the base model, beside the reference reply."""
    rows = []
    for enc in splits.validation[: cfg.eval.samples]:
        # the last trained reply starts where its labels start: everything before it is the prompt
        starts = [i for i in range(1, len(enc.labels)) if enc.labels[i] != IGNORE and enc.labels[i - 1] == IGNORE]
        if not starts:
            continue
        prompt = enc.input_ids[: starts[-1]]

        def reply(stream) -> str:
            return "".join(stream).strip()

        row = {
            "scenario": "validation conversation",
            "prompt": tok.decode(prompt, skip_special_tokens=True).strip()[-600:],
            "reference": tok.decode(
                [t for t in enc.labels[starts[-1] :] if t != IGNORE], skip_special_tokens=True
            ).strip(),
            "tuned": reply(gen.stream(prompt, cfg.eval.max_new_tokens)),
        }
        if cfg.eval.evaluate_base:
            with gen.disable_adapter():
                row["base"] = reply(gen.stream(prompt, cfg.eval.max_new_tokens))
        rows.append(row)
    return rows


def run(cfg: SftRunConfig, resume: bool = False) -> dict:
    run_dir, trainer, splits, metrics = _train(cfg, resume)
    if not is_main_process():
        return metrics
    model, tok = trainer.unwrapped().model, trainer.tokenizer
    gen = eval_generator(cfg, model, tok, run_dir / "adapter" if cfg.training.enabled else None)
    if cfg.eval.samples and splits.validation:
        metrics["samples"] = validation_samples(cfg, gen, tok, splits)
    if cfg.safety.enabled:
        from tunesmith.evaluation.ailuminate import load_prompts

        guard = build_guard(cfg, cfg.model.name)
        prompts = load_prompts(cfg.safety.prompts, cfg.safety.limit, cfg.training.seed)
        metrics["safety"] = judge_safety(cfg, gen, guard, prompts, run_dir, cfg.run_name, resume)
        if cfg.eval.evaluate_base:
            with gen.disable_adapter():
                metrics["base_safety"] = judge_safety(cfg, gen, guard, prompts, run_dir, f"{cfg.run_name}-base", resume)
    return _finish(cfg, run_dir, splits, metrics)


def train_only(cfg: SftRunConfig, resume: bool = False) -> Path:
    run_dir, _, splits, metrics = _train(cfg, resume)
    if is_main_process():
        _finish(cfg, run_dir, splits, metrics)
    say(f"adapter saved to {run_dir / 'adapter'}")
    return run_dir / "adapter"


def validate(cfg: SftRunConfig) -> list[str]:
    check_inputs(cfg)
    from tunesmith.modeling.loading import load_run_tokenizer

    tok = load_run_tokenizer(cfg)
    splits = _load(cfg, tok)
    lines = [
        f"model: {cfg.model.name}",
        f"train: {splits.train_ref}",
        f"data: {_describe(splits)}",
        f"packing: {'on' if cfg.training.packing else 'off'}; trackers: {', '.join(cfg.training.trackers) or 'none'}",
    ]
    if cfg.safety.enabled:
        from tunesmith.evaluation.ailuminate import load_prompts

        n = len(load_prompts(cfg.safety.prompts, cfg.safety.limit))
        lines.append(f"safety prompts: {cfg.safety.prompts} ({n})")
    return lines


RECIPE = Recipe(
    name="sft",
    summary=(
        "LoRA SFT on your own chat data (messages / ShareGPT / Alpaca / prompt-completion); validation loss, "
        "best adapter, early stopping, packing, trackers, model card"
    ),
    config_class=SftRunConfig,
    validate=validate,
    train=train_only,
    run=run,
)
