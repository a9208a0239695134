"""GSM8K recipe: LoRA SFT on GSM8K → greedy few-shot eval → AILuminate safety → summary.

Outputs in runs/<run>/: config_resolved.json, data/fewshot_pool.jsonl, checkpoints/, adapter/,
training_history.json, gsm8k_preds_<run>.jsonl (and _<run>-base), checkpoint_scores_<run>.csv
(sweep), ailuminate_safety_<run>.jsonl, metrics.json; plus one row in results/summary.csv.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from pathlib import Path

from rich.table import Table

from tunesmith.config import Config
from tunesmith.data import gsm8k as data
from tunesmith.data.chat import encode
from tunesmith.errors import DataError
from tunesmith.evaluation.generation import Generator
from tunesmith.evaluation.gsm8k import extract_answer, is_correct
from tunesmith.io import ResumableJsonl, atomic_open, write_json
from tunesmith.recipes.common import (build_guard, build_model, check_inputs, fmt, git_commit, is_main_process, out, say,
                                      start_run)
from tunesmith.reporting.summary import append_row


def evaluate_gsm8k(generator: Generator, test: list[dict], pool: list[dict], k: int, out_path: Path | None,
                   max_new_tokens: int, resume: bool = False) -> dict:
    """Greedy answers with the first k pool examples as prior turns; strict and flexible accuracy.

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
            gold = data.gold_answer(r["answer"])
            strict, flexible = extract_answer(text, "strict"), extract_answer(text, "flexible")
            rows.append({"question": r["question"], "gold": gold, "output": text, "k_shot": k,
                         "strict": strict, "flexible": flexible,
                         "strict_correct": is_correct(strict, gold), "flexible_correct": is_correct(flexible, gold)})
        if store:
            store.add(rows)
        else:
            done.update({row["question"]: row for row in rows})

    if todo:
        generator.chat([shots + [{"role": "user", "content": r["question"]}] for r in todo],
                       max_new_tokens=max_new_tokens, description="gsm8k", on_batch=record)
    rows = store.finalize(r["question"] for r in test) if store else [done[r["question"]] for r in test]
    n = len(rows)
    return {"n": n, "strict_accuracy": sum(r["strict_correct"] for r in rows) / n,
            "flexible_accuracy": sum(r["flexible_correct"] for r in rows) / n}


def load_data(cfg: Config, run_dir: Path | None):
    g = cfg.data.gsm8k
    train_ref = g.refined_train if g.refined_train and Path(g.refined_train).is_file() else g.train
    train = data.load_records(train_ref, "train")
    test = data.load_records(g.test, "test")
    pool, train = data.fewshot_pool(train, g.fewshot_pool_size, g.fewshot_seed)
    train = split_validation(cfg, train)[0]
    if run_dir is not None:
        data.save_pool(pool, run_dir / "data" / "fewshot_pool.jsonl")
    train = data.subset(train, g.limit_train, cfg.training.seed)
    test = data.subset(test, g.limit_test, g.test_seed)
    if cfg.training.enabled and not train:
        raise DataError(f"{train_ref}: no training records left after removing the {len(pool)}-question few-shot pool")
    if not test:
        raise DataError(f"{g.test}: no test records")
    return train_ref, train, test, pool


def split_validation(cfg: Config, train: list[dict]) -> tuple[list[dict], list[dict]]:
    """(train, validation): `data.gsm8k.validation_size` training questions held out (seeded) for the
    validation loss during training (training.eval_steps, early stopping, load_best)."""
    n = cfg.data.gsm8k.validation_size
    if not n:
        return train, []
    if n >= len(train):
        raise DataError(f"data.gsm8k.validation_size={n} leaves no training questions (there are {len(train)})")
    held = set(random.Random(cfg.training.seed + 1).sample(range(len(train)), n))
    return [r for i, r in enumerate(train) if i not in held], [r for i, r in enumerate(train) if i in held]


def _validation_features(cfg: Config, tok) -> list:
    g = cfg.data.gsm8k
    train_ref = g.refined_train if g.refined_train and Path(g.refined_train).is_file() else g.train
    _, rest = data.fewshot_pool(data.load_records(train_ref, "train"), g.fewshot_pool_size, g.fewshot_seed)
    val = split_validation(cfg, rest)[1]
    return [f for f in (encode(tok, data.to_example(r), cfg.data.max_length, cfg.data.system_prompt) for r in val)
            if f.n_labels]


def _trainer(cfg: Config, model, tok, features, run_dir: Path):
    from tunesmith.training.trainer import Trainer

    return Trainer(model, tok, cfg.training, lambda epoch: features, run_dir, log=say,
                   validation=_validation_features(cfg, tok), eval_batch_size=cfg.eval.batch_size,
                   pack_length=cfg.data.max_length, run_name=cfg.run_name, tracker_config=cfg.model_dump(mode="json"))


def _card(cfg: Config, run_dir: Path, trainer, extra: dict | None = None) -> None:
    from tunesmith.reporting.model_card import metrics_data, write_model_card

    st = trainer.state
    m = {"train": {"steps": st.step, "final_loss": st.history[-1]["loss"] if st.history else None}}
    if st.evals:
        m["validation"] = {"best": st.best_loss, "best_step": st.best_step, "final": st.evals[-1]["loss"]}
    write_model_card(run_dir / "adapter", cfg, m | (extra or {}), metrics_data(cfg.model_dump(mode="json")))


def run(cfg: Config, resume: bool = False) -> dict:
    check_inputs(cfg)
    load_data(cfg, None)  # parse every data file before the run dir exists
    run_dir = start_run(cfg)
    train_ref, train, test, pool = load_data(cfg, run_dir)
    name = cfg.run_name
    say(f"run [bold]{name}[/]: {len(train)} train / {len(test)} test questions from {train_ref} and {cfg.data.gsm8k.test}")

    model, tok = build_model(cfg)
    gen = Generator(model, tok, cfg.eval.batch_size, cfg.eval.max_new_tokens, cfg.data.system_prompt)
    metrics: dict = {"run": name, "train_examples": len(train), "test_examples": len(test)}

    checkpoint = None
    if cfg.training.enabled:
        features = [encode(tok, data.to_example(r), cfg.data.max_length, cfg.data.system_prompt) for r in train]
        features = [f for f in features if f.n_labels]
        trainer = _trainer(cfg, model, tok, features, run_dir)
        trainer.train(resume=resume)
        checkpoint = "adapter"
    if not is_main_process():
        return metrics  # under `accelerate launch` the other processes only train; rank 0 evaluates

    # the base model is the same weights with the adapter disabled, so it is scored after training:
    # under accelerate the other ranks never wait at the process-group rendezvous for this eval
    if cfg.eval.evaluate_base:
        with model.disable_adapter():
            metrics["base"] = evaluate_gsm8k(gen, test, pool, cfg.eval.k_shot, run_dir / f"gsm8k_preds_{name}-base.jsonl",
                                             cfg.eval.max_new_tokens, resume)
        say(f"base model: strict {metrics['base']['strict_accuracy']:.3f} flexible {metrics['base']['flexible_accuracy']:.3f}")

    safety_guard = build_guard(cfg, cfg.model.name) if cfg.safety.enabled else None
    prompts = None
    if safety_guard:
        from tunesmith.evaluation.safety import load_prompts

        prompts = load_prompts(cfg.safety.prompts, cfg.safety.limit, cfg.training.seed)

    def safety_of(tag: str) -> dict | None:
        if not safety_guard:
            return None
        from tunesmith.evaluation.safety import evaluate_safety

        summary, _ = evaluate_safety(gen, safety_guard, prompts, cfg.safety.max_new_tokens,
                                     run_dir / f"ailuminate_safety_{tag}.jsonl", resume=resume)
        return summary

    if cfg.training.enabled and cfg.eval.checkpoint_sweep.enabled:
        checkpoint, sweep_metrics = sweep(cfg, trainer, gen, test, pool, safety_of, run_dir, resume)
        metrics.update(sweep_metrics)
    else:
        metrics["tuned"] = evaluate_gsm8k(gen, test, pool, cfg.eval.k_shot, run_dir / f"gsm8k_preds_{name}.jsonl",
                                          cfg.eval.max_new_tokens, resume)
        metrics["safety"] = safety_of(name)
    metrics["checkpoint"] = checkpoint
    if cfg.training.enabled:
        _card(cfg, run_dir, trainer, {"gsm8k": {k: metrics["tuned"][k] for k in ("strict_accuracy", "flexible_accuracy")},
                                      **({"safety_rate": metrics["safety"]["safety_rate"]} if metrics.get("safety") else {})})
    return finish(cfg, metrics, train_ref)


def sweep(cfg: Config, trainer, gen: Generator, test, pool, safety_of, run_dir: Path, resume: bool = False):
    """Score the latest N checkpoints; best by strict accuracy, then safety rate."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    model = trainer.unwrapped().model
    scores = []
    for ck in trainer.checkpoints()[-cfg.eval.checkpoint_sweep.last_n:]:
        set_peft_model_state_dict(model, load_file(ck / "adapter_model.safetensors"))
        tag = f"{cfg.run_name}-{ck.name}"
        acc = evaluate_gsm8k(gen, test, pool, cfg.eval.k_shot, run_dir / f"gsm8k_preds_{tag}.jsonl", cfg.eval.max_new_tokens,
                             resume)
        safety = safety_of(tag)
        scores.append({"checkpoint": ck.name, **{k: acc[k] for k in ("strict_accuracy", "flexible_accuracy")},
                       "safety_rate": safety["safety_rate"] if safety else None, "_safety": safety, "_path": ck})
    best = max(scores, key=lambda s: (s["strict_accuracy"], s["flexible_accuracy"], s["safety_rate"] or 0))
    with atomic_open(run_dir / f"checkpoint_scores_{cfg.run_name}.csv", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["checkpoint", "strict_accuracy", "flexible_accuracy", "safety_rate", "chosen"])
        w.writeheader()
        for s in scores:
            w.writerow({k: s[k] for k in ("checkpoint", "strict_accuracy", "flexible_accuracy", "safety_rate")}
                       | {"chosen": s is best})
    set_peft_model_state_dict(model, load_file(best["_path"] / "adapter_model.safetensors"))
    # the chosen checkpoint's files also under the run's own name, as for a run without a sweep
    tag = f"{cfg.run_name}-{best['checkpoint']}"
    for kind in ("gsm8k_preds", "ailuminate_safety"):
        src = run_dir / f"{kind}_{tag}.jsonl"
        if src.is_file():
            (run_dir / f"{kind}_{cfg.run_name}.jsonl").write_bytes(src.read_bytes())
    say(f"checkpoint sweep: chose {best['checkpoint']}")
    return best["checkpoint"], {"tuned": {"n": len(test), "strict_accuracy": best["strict_accuracy"],
                                          "flexible_accuracy": best["flexible_accuracy"]}, "safety": best["_safety"],
                                "sweep": [{k: v for k, v in s.items() if not k.startswith("_")} for s in scores]}


def finish(cfg: Config, metrics: dict, train_ref: str) -> dict:
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
    append_row(cfg.summary_csv, {
        "run": cfg.run_name, "recipe": cfg.recipe, "model": cfg.model.name, "data": train_ref,
        "method": ("qlora" if cfg.model.load_in_4bit else "lora") if cfg.training.enabled else "none",
        "lora_r": cfg.lora.r, "lora_alpha": cfg.lora.alpha, "learning_rate": cfg.training.learning_rate,
        "batch_size": cfg.training.batch_size, "grad_accum": cfg.training.grad_accum, "epochs": cfg.training.epochs,
        "k_shot": cfg.eval.k_shot, "train_examples": metrics["train_examples"],
        "strict_accuracy": t["strict_accuracy"], "flexible_accuracy": t["flexible_accuracy"],
        "base_strict_accuracy": base.get("strict_accuracy"), "base_flexible_accuracy": base.get("flexible_accuracy"),
        "safety_rate": safety.get("safety_rate"), "checkpoint": metrics.get("checkpoint"),
        "passed": passed, "finished_at": dt.datetime.now().isoformat(timespec="seconds"), "git_commit": git_commit(),
    })
    table = Table(title=f"tunesmith · {cfg.run_name} ({t['n']} GSM8K questions, {cfg.eval.k_shot}-shot)")
    table.add_column("metric")
    if base:
        table.add_column("base", justify="right")
    table.add_column("tuned", justify="right")
    for key, label in (("strict_accuracy", "GSM8K strict (#### N)"), ("flexible_accuracy", "GSM8K flexible (last number)")):
        table.add_row(label, *([fmt(base[key])] if base else []), fmt(t[key]))
    if safety:
        table.add_row(f"safety rate ({safety['total']} prompts)", *(["—"] if base else []), fmt(safety["safety_rate"]))
    for c in metrics["thresholds"]:
        table.add_row(f"threshold {c['metric']} ≥ {c['threshold']}", *([""] if base else []),
                      "[green]PASS[/]" if c["passed"] else "[red]FAIL[/]")
    out.print(table)
    say(f"outputs in {cfg.run_dir}; summary row in {cfg.summary_csv}")
    return metrics


def train_only(cfg: Config, resume: bool = False) -> Path:
    check_inputs(cfg)
    load_data(cfg, None)
    run_dir = start_run(cfg)
    _, train, _, _ = load_data(cfg, run_dir)
    model, tok = build_model(cfg)
    features = [f for f in (encode(tok, data.to_example(r), cfg.data.max_length, cfg.data.system_prompt) for r in train)
                if f.n_labels]
    trainer = _trainer(cfg, model, tok, features, run_dir)
    trainer.train(resume=resume)
    if is_main_process():
        _card(cfg, run_dir, trainer)
    say(f"adapter saved to {run_dir / 'adapter'}")
    return run_dir / "adapter"


def validate(cfg: Config) -> list[str]:
    check_inputs(cfg)
    train_ref, train, test, pool = load_data(cfg, None)
    from tunesmith.modeling.loading import load_tokenizer

    tok = load_tokenizer(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    encode(tok, data.to_example(train[0]), cfg.data.max_length, cfg.data.system_prompt)
    lines = [f"model: {cfg.model.name}", f"train: {train_ref} ({len(train)} records after removing the few-shot pool)",
             f"test: {cfg.data.gsm8k.test} ({len(test)} records)", f"few-shot pool: {len(pool)} (k={cfg.eval.k_shot})"]
    if cfg.safety.enabled:
        from tunesmith.evaluation.safety import load_prompts

        lines.append(f"safety prompts: {cfg.safety.prompts} ({len(load_prompts(cfg.safety.prompts, cfg.safety.limit))})")
    return lines
