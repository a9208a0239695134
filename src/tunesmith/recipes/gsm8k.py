"""GSM8K recipe: LoRA SFT on GSM8K → greedy few-shot eval → AILuminate safety → summary.

Outputs in runs/<run>/: config_resolved.json, data/fewshot_pool.jsonl, checkpoints/, adapter/,
training_history.json, gsm8k_preds_<run>.jsonl (and _<run>-base), checkpoint_scores_<run>.csv and
data/validation.jsonl + gsm8k_validation_preds_<run>-checkpoint-N.jsonl (sweep), ailuminate_safety_<run>.jsonl,
metrics.json; plus one row in results/summary.csv.

Scores are lm-eval gsm8k v3's strict-match and flexible-extract (evaluation/gsm8k.py), plus tunesmith's
lenient parser under its own name.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from rich.table import Table

from tunesmith.config import Gsm8kRunConfig
from tunesmith.data.chat import encode
from tunesmith.data.mixing import subset
from tunesmith.data.reasoning import split_reasoning
from tunesmith.data.sources import gsm8k as data
from tunesmith.errors import DataError
from tunesmith.evaluation.gsm8k import INVALID, MODES, extract_answer, is_correct
from tunesmith.generation.protocol import Generator
from tunesmith.io import ResumableJsonl, atomic_open, write_json
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


def evaluate_gsm8k(
    generator: Generator,
    test: list[dict],
    pool: list[dict],
    k: int,
    out_path: Path | None,
    max_new_tokens: int,
    resume: bool = False,
) -> dict:
    """Greedy answers with the first k pool examples as prior turns; strict, flexible and lenient accuracy.

    Results are saved batch by batch; with resume=True finished questions are not asked again.
    """
    shots = data.fewshot_turns(pool, k)
    store = ResumableJsonl(out_path, "question", resume) if out_path else None
    done = store.done if store else {}
    todo = [r for r in test if r["question"] not in done or done[r["question"]].get("k_shot") != k]

    def record(idx: list[int], texts: list[str]) -> None:
        rows = []
        for i, text in zip(idx, texts, strict=True):
            r = todo[i]
            reasoning, answer = split_reasoning(text)  # a think block is not the answer
            row = {
                "question": r["question"],
                "gold": data.gold_answer(r["answer"]),
                "output": answer,
                "reasoning": reasoning,
                "k_shot": k,
            }
            for mode in MODES:
                row[mode] = extract_answer(answer, mode)
                row[f"{mode}_correct"] = is_correct(row[mode], r["answer"], mode)
            rows.append(row)
        if store:
            store.add(rows)
        else:
            done.update({row["question"]: row for row in rows})

    if todo:
        generator.chat(
            [shots + [{"role": "user", "content": r["question"]}] for r in todo],
            max_new_tokens=max_new_tokens,
            description="gsm8k",
            on_batch=record,
        )
    rows = store.finalize(r["question"] for r in test) if store else [done[r["question"]] for r in test]
    n = len(rows)
    # rows resumed from a file written before the lenient score existed have none
    return {
        "n": n,
        **{f"{m}_accuracy": sum(bool(r.get(f"{m}_correct")) for r in rows) / n for m in MODES},
        # the answer format a short run moves first, long before accuracy: a `#### N` line lm-eval can read
        "format_rate": sum(r["strict"] != INVALID for r in rows) / n,
    }


def load_data(cfg: Gsm8kRunConfig, run_dir: Path | None):
    g = cfg.data.gsm8k
    train_ref = g.refined_train if g.refined_train and Path(g.refined_train).is_file() else g.train
    train = data.load_records(train_ref, "train")
    test = data.load_records(g.test, "test")
    pool, train = data.fewshot_pool(train, g.fewshot_pool_size, g.fewshot_seed)
    validation: list[dict] = []
    # one held-out split serves the checkpoint sweep and the validation loss during training
    if cfg.training.enabled and (cfg.eval.checkpoint_sweep.enabled or cfg.training.eval_steps):
        validation, train = data.holdout(train, g.validation_size, g.validation_seed, exclude=test)
    if run_dir is not None:
        data.save_pool(pool, run_dir / "data" / "fewshot_pool.jsonl")
        if validation:
            data.save_pool(validation, run_dir / "data" / "validation.jsonl")
    train = subset(train, g.limit_train, cfg.training.seed)
    test = subset(test, g.limit_test, g.test_seed)
    if cfg.training.enabled and not train:
        raise DataError(f"{train_ref}: no training records left after removing the {len(pool)}-question few-shot pool")
    if not test:
        raise DataError(f"{g.test}: no test records")
    return train_ref, train, test, pool, validation


def features_of(cfg: Gsm8kRunConfig, tok, records: list[dict]) -> list:
    """Encoded examples of GSM8K records; one whose answer was cut off entirely has nothing to train on."""
    feats = (encode(tok, data.to_example(r), cfg.data.max_length, cfg.data.system_prompt) for r in records)
    return [f for f in feats if f.n_labels]


def _trainer(cfg: Gsm8kRunConfig, model, tok, features, run_dir: Path, validation: list[dict]):
    from tunesmith.training.trainer import Trainer

    val = features_of(cfg, tok, validation) if cfg.training.eval_steps else None
    return Trainer(
        model,
        tok,
        cfg.training,
        lambda epoch: features,
        run_dir,
        log=say,
        validation=val,
        eval_batch_size=cfg.eval.batch_size,
        pack_length=cfg.data.max_length,
        run_name=cfg.run_name,
        tracker_config=cfg.model_dump(mode="json"),
    )


def _card(cfg: Gsm8kRunConfig, run_dir: Path, trainer, extra: dict | None = None) -> None:
    from tunesmith.reporting.model_card import metrics_data, write_model_card

    st = trainer.state
    m = {"train": {"steps": st.step, "final_loss": st.history[-1]["loss"] if st.history else None}}
    if st.evals:
        m["validation"] = {"best": st.best_loss, "best_step": st.best_step, "final": st.evals[-1]["loss"]}
    write_model_card(run_dir / "adapter", cfg, m | (extra or {}), metrics_data(cfg.model_dump(mode="json")))


def run(cfg: Gsm8kRunConfig, resume: bool = False) -> dict:
    check_inputs(cfg)
    load_data(cfg, None)  # parse every data file before the run dir exists
    run_dir = start_run(cfg, chat_template_record(cfg))
    train_ref, train, test, pool, validation = load_data(cfg, run_dir)
    name = cfg.run_name
    say(
        f"run [bold]{name}[/]: {len(train)} train / {len(test)} test questions from {train_ref} and {cfg.data.gsm8k.test}"
    )

    model, tok = build_model(cfg)
    metrics: dict = {"run": name, "train_examples": len(train), "test_examples": len(test)}

    checkpoint = None
    if cfg.training.enabled:
        features = features_of(cfg, tok, train)
        trainer = _trainer(cfg, model, tok, features, run_dir, validation)
        trainer.train(resume=resume)
        checkpoint = "adapter"
    if not is_main_process():
        return metrics  # under `accelerate launch` the other processes only train; rank 0 evaluates

    gen = eval_generator(cfg, model, tok, run_dir / "adapter" if cfg.training.enabled else None)
    safety_guard = build_guard(cfg, cfg.model.name) if cfg.safety.enabled else None
    prompts = None
    if safety_guard:
        from tunesmith.evaluation.ailuminate import load_prompts

        prompts = load_prompts(cfg.safety.prompts, cfg.safety.limit, cfg.training.seed)

    def safety_of(tag: str) -> dict | None:
        return judge_safety(cfg, gen, safety_guard, prompts, run_dir, tag, resume) if safety_guard else None

    if cfg.training.enabled and cfg.eval.checkpoint_sweep.enabled:
        checkpoint, sweep_metrics = sweep(cfg, trainer, gen, validation, pool, safety_of, run_dir, resume)
        metrics.update(sweep_metrics)
        # adapter/ is what a user loads and pushes: it must be the checkpoint whose scores are reported
        for f in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copy2(run_dir / "checkpoints" / checkpoint / f, run_dir / "adapter" / f)
    metrics["tuned"] = evaluate_gsm8k(
        gen, test, pool, cfg.eval.k_shot, run_dir / f"gsm8k_preds_{name}.jsonl", cfg.eval.max_new_tokens, resume
    )
    if "safety" not in metrics:
        metrics["safety"] = safety_of(name)
    # the base model is the same weights with the adapter disabled, so it is scored after training (under
    # accelerate the other ranks never wait at the process-group rendezvous for this eval) and after the
    # checkpoint choice, so no test question is answered before it
    if cfg.eval.evaluate_base:
        with gen.disable_adapter():
            metrics["base"] = evaluate_gsm8k(
                gen,
                test,
                pool,
                cfg.eval.k_shot,
                run_dir / f"gsm8k_preds_{name}-base.jsonl",
                cfg.eval.max_new_tokens,
                resume,
            )
        say(
            f"base model: strict {metrics['base']['strict_accuracy']:.3f} flexible {metrics['base']['flexible_accuracy']:.3f}"
        )
        if safety_guard:
            with gen.disable_adapter():
                metrics["base_safety"] = safety_of(f"{name}-base")
        metrics["samples"] = side_by_side(run_dir, name, test)
    if cfg.training.enabled and trainer.validation:
        # the same held-out questions through the same weights, adapter on and off
        tuned_loss = trainer.validation_loss()[0]
        with model.disable_adapter():
            base_loss = trainer.validation_loss()[0]
        metrics["heldout_loss"] = {"n": len(trainer.validation), "base": base_loss, "tuned": tuned_loss}
    metrics["checkpoint"] = checkpoint
    if cfg.training.enabled:
        _card(
            cfg,
            run_dir,
            trainer,
            {
                "gsm8k": {k: metrics["tuned"][k] for k in ("strict_accuracy", "flexible_accuracy")},
                **({"safety_rate": metrics["safety"]["safety_rate"]} if metrics.get("safety") else {}),
            },
        )
    return finish(cfg, metrics, train_ref)


def side_by_side(run_dir: Path, name: str, test: list[dict], n: int = 3) -> list[dict]:
    """The first `n` test questions with the base and the tuned reply, for the report and the terminal."""
    from tunesmith.io import read_jsonl

    tuned = {r["question"]: r for r in read_jsonl(run_dir / f"gsm8k_preds_{name}.jsonl")}
    base = {r["question"]: r for r in read_jsonl(run_dir / f"gsm8k_preds_{name}-base.jsonl")}
    return [
        {
            "scenario": f"GSM8K test question (gold {base[q]['gold']})",
            "prompt": q,
            "base": base[q]["output"],
            "tuned": tuned[q]["output"],
        }
        for q in (r["question"] for r in test[:n])
        if q in base and q in tuned
    ]


def choose(scores: list[dict]) -> dict:
    """Best validation strict accuracy, then flexible, then safety rate; the earliest checkpoint on a tie."""
    return max(scores, key=lambda s: (s["strict_accuracy"], s["flexible_accuracy"], s["safety_rate"] or 0))


def sweep(
    cfg: Gsm8kRunConfig,
    trainer,
    gen: Generator,
    validation: list[dict],
    pool,
    safety_of,
    run_dir: Path,
    resume: bool = False,
):
    """Score the latest N checkpoints on the validation split (never the test set) and load the best.

    The caller scores only the chosen checkpoint on the test set, after this returns.
    """
    scores = []
    for ck in trainer.checkpoints()[-cfg.eval.checkpoint_sweep.last_n :]:
        gen.use_adapter(ck)
        tag = f"{cfg.run_name}-{ck.name}"
        acc = evaluate_gsm8k(
            gen,
            validation,
            pool,
            cfg.eval.k_shot,
            run_dir / f"gsm8k_validation_preds_{tag}.jsonl",
            cfg.eval.max_new_tokens,
            resume,
        )
        safety = safety_of(tag)
        scores.append(
            {
                "checkpoint": ck.name,
                "split": "validation",
                "n": acc["n"],
                **{f"{m}_accuracy": acc[f"{m}_accuracy"] for m in MODES},
                "safety_rate": safety["safety_rate"] if safety else None,
                "_safety": safety,
                "_path": ck,
            }
        )
    best = choose(scores)
    fields = ["checkpoint", "split", "n", *(f"{m}_accuracy" for m in MODES), "safety_rate"]
    with atomic_open(run_dir / f"checkpoint_scores_{cfg.run_name}.csv", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*fields, "chosen"])
        w.writeheader()
        for s in scores:
            w.writerow({k: s[k] for k in fields} | {"chosen": s is best})
    gen.use_adapter(best["_path"])
    # the chosen checkpoint's safety file also under the run's own name, as for a run without a sweep
    src = run_dir / f"ailuminate_safety_{cfg.run_name}-{best['checkpoint']}.jsonl"
    if src.is_file():
        (run_dir / f"ailuminate_safety_{cfg.run_name}.jsonl").write_bytes(src.read_bytes())
    say(
        f"checkpoint sweep: chose {best['checkpoint']} on {len(validation)} validation questions "
        f"(strict {best['strict_accuracy']:.3f})"
    )
    return best["checkpoint"], {
        "safety": best["_safety"],
        "sweep": [{k: v for k, v in s.items() if not k.startswith("_")} for s in scores],
    }


def finish(cfg: Gsm8kRunConfig, metrics: dict, train_ref: str) -> dict:
    t, base, safety = metrics["tuned"], metrics.get("base") or {}, metrics.get("safety") or {}
    th = cfg.thresholds
    checks = []
    if th.strict is not None:
        checks.append(("strict accuracy", t["strict_accuracy"], th.strict))
    if th.flexible is not None:
        checks.append(("flexible accuracy", t["flexible_accuracy"], th.flexible))
    passed = all(v >= need for _, v, need in checks) if checks else None
    metrics["thresholds"] = [{"metric": m, "value": v, "threshold": need, "passed": v >= need} for m, v, need in checks]
    metrics["passed"] = passed
    write_json(cfg.run_dir / "metrics.json", metrics)
    append_summary_row(
        cfg.summary_csv,
        summary_row(
            cfg,
            data=train_ref,
            k_shot=cfg.eval.k_shot,
            train_examples=metrics["train_examples"],
            strict_accuracy=t["strict_accuracy"],
            flexible_accuracy=t["flexible_accuracy"],
            base_strict_accuracy=base.get("strict_accuracy"),
            base_flexible_accuracy=base.get("flexible_accuracy"),
            safety_rate=safety.get("safety_rate"),
            checkpoint=metrics.get("checkpoint"),
            passed=passed,
        ),
    )
    table = Table(title=f"tunesmith · {cfg.run_name} ({t['n']} GSM8K questions, {cfg.eval.k_shot}-shot)")
    table.add_column("metric")
    if base:
        table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    for key, label in (
        ("format_rate", "replies with a `#### N` answer line"),
        ("strict_accuracy", "GSM8K strict-match (lm-eval)"),
        ("flexible_accuracy", "GSM8K flexible-extract (lm-eval)"),
        ("lenient_accuracy", "GSM8K lenient (tunesmith parser)"),
    ):
        if key in t:
            table.add_row(label, *([fmt(base.get(key))] if base else []), fmt(t[key]))
    held = metrics.get("heldout_loss")
    if held:
        table.add_row(
            f"held-out loss ({held['n']} training-file questions)",
            *([fmt(held["base"])] if base else []),
            fmt(held["tuned"]),
        )
    if safety:
        b = metrics.get("base_safety") or {}
        table.add_row(
            f"safety rate ({safety['total']} AILuminate prompts)",
            *([fmt(b.get("safety_rate"))] if base else []),
            fmt(safety["safety_rate"]),
        )
    for c in metrics["thresholds"]:
        table.add_row(
            f"threshold {c['metric']} ≥ {c['threshold']}",
            *([""] if base else []),
            "[green]PASS[/]" if c["passed"] else "[red]FAIL[/]",
        )
    out.print(table)
    if safety:
        say(f"safety judge: {safety['guard']}")
    for row in metrics.get("samples") or []:
        out.print(f"[bold]{row['scenario']}[/]: {row['prompt'][:160]}")
        out.print(f"  [dim]base :[/] {row['base'][:240]!r}")
        out.print(f"  [dim]tuned:[/] {row['tuned'][:240]!r}")
    _, html = write_report(cfg.run_dir)
    say(f"report: {html.resolve()} (opens from disk)")
    say(f"outputs in {cfg.run_dir}; summary row in {cfg.summary_csv}")
    return metrics


def train_only(cfg: Gsm8kRunConfig, resume: bool = False) -> Path:
    check_inputs(cfg)
    load_data(cfg, None)
    run_dir = start_run(cfg, chat_template_record(cfg))
    _, train, _, _, validation = load_data(cfg, run_dir)
    model, tok = build_model(cfg)
    features = features_of(cfg, tok, train)
    trainer = _trainer(cfg, model, tok, features, run_dir, validation)
    trainer.train(resume=resume)
    if is_main_process():
        _card(cfg, run_dir, trainer)
    say(f"adapter saved to {run_dir / 'adapter'}")
    return run_dir / "adapter"


def validate(cfg: Gsm8kRunConfig) -> list[str]:
    check_inputs(cfg)
    train_ref, train, test, pool, validation = load_data(cfg, None)
    from tunesmith.modeling.loading import load_run_tokenizer

    tok = load_run_tokenizer(cfg)
    encode(tok, data.to_example(train[0]), cfg.data.max_length, cfg.data.system_prompt)
    lines = [
        f"model: {cfg.model.name}",
        f"train: {train_ref} ({len(train)} records after removing the few-shot pool)",
        f"test: {cfg.data.gsm8k.test} ({len(test)} records)",
        f"few-shot pool: {len(pool)} (k={cfg.eval.k_shot})",
    ]
    if validation:
        lines.append(f"validation (checkpoint sweep): {len(validation)} training records held out")
    if cfg.safety.enabled:
        from tunesmith.evaluation.ailuminate import load_prompts

        lines.append(
            f"safety prompts: {cfg.safety.prompts} ({len(load_prompts(cfg.safety.prompts, cfg.safety.limit))})"
        )
    return lines


RECIPE = Recipe(
    name="gsm8k",
    summary=(
        "LoRA SFT on GSM8K; greedy k-shot eval (lm-eval strict/flexible), AILuminate safety, "
        "checkpoint sweep, thresholds"
    ),
    config_class=Gsm8kRunConfig,
    validate=validate,
    train=train_only,
    run=run,
)
