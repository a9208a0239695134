"""The dpo recipe (`tunesmith run` with `recipe: dpo`, or `tunesmith dpo CONFIG`): preference-tune a
new LoRA adapter on top of the SFT model with TRL's DPOTrainer (preference/dpo.py) and report the
held-out reward margin before and after.

Outputs in runs/<run_name>/: dpo_adapter/ (the new adapter; applies on top of base+SFT),
adapter/ (SFT and DPO combined into one LoRA on the base model — rank r_sft + r_dpo, exact — plus
the SFT run's heads.safetensors, so `tunesmith chat/predict/export --adapter runs/<run>/adapter`
work unchanged), metrics.json, training_history.json, config_resolved.json; a summary.csv row.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path

from rich.table import Table

from tunesmith.config import DpoRunConfig
from tunesmith.errors import ConfigError
from tunesmith.io import write_json
from tunesmith.modeling.export import combine_adapters
from tunesmith.modeling.heads import HEADS_FILE
from tunesmith.preference.dpo import (
    TRAIN_MARGIN_SAMPLE,
    build_trainer,
    load_start_model,
    preference_margins,
    split_pairs,
)
from tunesmith.recipes.base import Recipe
from tunesmith.recipes.common import chat_template_record, check_inputs
from tunesmith.reporting.model_card import write_model_card
from tunesmith.runs import append_summary_row, start_run, summary_row
from tunesmith.ui import fmt, out, say


def run_dpo(cfg: DpoRunConfig, log: Callable[[str], None] | None = None) -> dict:

    log = log or say
    d = cfg.dpo
    train, held = split_pairs(cfg)
    check_inputs(cfg)
    tok, model, sft = load_start_model(cfg)
    run_dir = start_run(cfg, chat_template_record(cfg))
    trainer = build_trainer(cfg, model, tok, train, run_dir / "trainer")
    main = trainer.is_world_process_zero()
    policy = trainer.model  # the PeftModel (unwrapped), on the training device
    log(
        f"DPO on {len(train)} pairs ({len(held)} held out), β={d.beta}, loss {d.loss_type}, "
        f"start: {cfg.model.name}{' + ' + str(sft) + ' (merged)' if sft else ''}"
    )
    train_eval = (
        train
        if len(train) <= TRAIN_MARGIN_SAMPLE
        else random.Random(cfg.training.seed).sample(train, TRAIN_MARGIN_SAMPLE)
    )

    def margins() -> dict:
        return {
            "heldout": preference_margins(policy, tok, held, d.beta, cfg.data.max_length, d.eval_batch_size),
            "train": preference_margins(policy, tok, train_eval, d.beta, cfg.data.max_length, d.eval_batch_size),
        }

    before = margins()
    log(
        f"held-out reward margin before: {before['heldout'].get('reward_margin')} "
        f"(log-prob margin {before['heldout'].get('logp_margin')})"
    )
    result = trainer.train()
    after = margins()
    log(
        f"held-out reward margin after: {after['heldout'].get('reward_margin')} "
        f"(log-prob margin {after['heldout'].get('logp_margin')}, reward accuracy {after['heldout'].get('reward_accuracy')})"
    )

    dpo_dir = run_dir / "dpo_adapter"
    trainer.save_model(str(dpo_dir))
    if main:  # TRL also pickles its TrainingArguments there; outputs stay pickle-free
        (dpo_dir / "training_args.bin").unlink(missing_ok=True)
    metrics = {
        "run": cfg.run_name,
        "recipe": "dpo",
        "model": cfg.model.name,
        "sft_adapter": str(sft) if sft else None,
        "pairs": {
            "file": d.pairs,
            "heldout_file": d.heldout,
            "train": len(train),
            "heldout": len(held),
            "train_scored": len(train_eval),
        },
        "beta": d.beta,
        "loss_type": d.loss_type,
        "margins": {split: {"before": before[split], "after": after[split]} for split in ("heldout", "train")},
        "training": {
            "steps": trainer.state.global_step,
            "train_loss": result.training_loss,
            "runtime_s": round(result.metrics.get("train_runtime", 0.0), 1),
        },
    }
    if main:
        adapter = run_dir / "adapter"
        tmp = run_dir / ".tmp-adapter"
        shutil.rmtree(tmp, ignore_errors=True)
        if sft is not None:
            combine_adapters(sft, dpo_dir, tmp)
            if (sft / HEADS_FILE).is_file():
                shutil.copy2(sft / HEADS_FILE, tmp / HEADS_FILE)
        else:
            shutil.copytree(dpo_dir, tmp)
        shutil.rmtree(adapter, ignore_errors=True)
        tmp.rename(adapter)
        write_model_card(
            adapter,
            cfg,
            {"training": metrics["training"], "heldout_margins": metrics["margins"]["heldout"]},
            [x for x in (d.pairs, f"SFT adapter {sft}" if sft else None) if x],
        )
        shutil.rmtree(run_dir / "trainer", ignore_errors=True)  # TRL's scratch dir (nothing saved there)
        write_json(run_dir / "training_history.json", trainer.state.log_history)
        write_json(run_dir / "metrics.json", metrics)
        _summary_row(cfg, metrics)
        print_margins(cfg, metrics)
        log(f"outputs in {run_dir}: adapter/ (SFT+DPO on the base model), dpo_adapter/, metrics.json")
    return metrics


def _summary_row(cfg: DpoRunConfig, m: dict) -> None:

    d = cfg.dpo
    append_summary_row(
        cfg.summary_csv,
        summary_row(
            cfg,
            data=d.pairs,
            method=f"lora+dpo({d.loss_type}, beta={d.beta})",
            train_examples=m["pairs"]["train"],
            checkpoint="adapter",
        ),
    )


def print_margins(cfg: DpoRunConfig, m: dict) -> None:

    t = Table(title=f"tunesmith · {cfg.run_name} (DPO, β={m['beta']}, {m['loss_type']})")
    for c, j in (("metric", "left"), ("before", "right"), ("after", "right")):
        t.add_column(c, justify=j)
    for split in ("heldout", "train"):
        b, a = m["margins"][split]["before"], m["margins"][split]["after"]
        if not b.get("n"):
            continue
        label = f"{'held-out' if split == 'heldout' else 'train'} ({b['n']} pairs)"
        t.add_row(f"{label} reward margin", fmt(b["reward_margin"], 4), fmt(a["reward_margin"], 4))
        t.add_row(f"{label} reward accuracy", fmt(b["reward_accuracy"]), fmt(a["reward_accuracy"]))
        t.add_row(f"{label} log-prob margin", fmt(b["logp_margin"], 3), fmt(a["logp_margin"], 3))
    out.print(t)


def validate(cfg: DpoRunConfig) -> list[str]:
    check_inputs(cfg)
    train, held = split_pairs(cfg)
    return [
        f"model: {cfg.model.name}",
        f"sft adapter: {cfg.dpo.sft_adapter or '(none: the base model)'}",
        f"pairs: {cfg.dpo.pairs} ({len(train)} train / {len(held)} held out)",
    ]


def run(cfg: DpoRunConfig, resume: bool = False) -> dict:
    if resume:
        # TRL's run here saves no checkpoints (they would hold pickled training args)
        raise ConfigError("--resume: the dpo recipe keeps no checkpoints; run it again from the start")
    return run_dpo(cfg)


def train(cfg: DpoRunConfig, resume: bool = False) -> Path:
    run(cfg, resume)
    return cfg.run_dir / "adapter"


RECIPE = Recipe(
    name="dpo",
    summary="preference tuning (TRL DPOTrainer) of a new adapter on top of an SFT adapter; held-out reward margin",
    config_class=DpoRunConfig,
    validate=validate,
    train=train,
    run=run,
)
