"""Empathy recipe: multi-task LoRA (LM + emotion head + strategy head + safety KL).

data (ESConv, GoEmotions, EmpatheticDialogues, shipped safety prompts; mixed p_i ∝ n_i^α)
→ train → validation loss → head metrics → EQ-Bench v2 (base vs tuned) → AILuminate safety
(base vs tuned, the gsm8k recipe's guard pipeline) → side-by-side samples → report.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from rich.table import Table

from tunesmith.config import EmpathyRunConfig
from tunesmith.data.chat import Encoded, encode, pad_token_id
from tunesmith.data.schema import Example
from tunesmith.data.taxonomy import EMOTIONS, STRATEGIES
from tunesmith.errors import DataError
from tunesmith.generation.factory import make_generator
from tunesmith.generation.protocol import Generator
from tunesmith.io import read_jsonl, write_json, write_jsonl
from tunesmith.modeling.forward import head_logits
from tunesmith.modeling.heads import Heads
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


# ---- data -----------------------------------------------------------------------------------
def load_sources(cfg: EmpathyRunConfig) -> tuple[dict[str, list[Example]], dict[str, list[Example]]]:
    """(training sources, held-out evaluation sets)."""
    from tunesmith.data.sources.esconv import load_esconv
    from tunesmith.data.sources.goemotions import load_goemotions
    from tunesmith.data.sources.kl_prompts import load_kl_prompts

    e = cfg.data.empathy
    train: dict[str, list[Example]] = {}
    held: dict[str, list[Example]] = {}
    if e.esconv:
        train["esconv"] = load_esconv(e.esconv, "train", history_turns=e.history_turns)
        held["esconv"] = load_esconv(e.esconv, "validation", history_turns=e.history_turns)
    if e.goemotions:
        train["goemotions"] = load_goemotions(e.goemotions, "train")
        held["goemotions"] = load_goemotions(e.goemotions, "dev")
    if e.empathetic_dialogues:
        from tunesmith.data.sources.empathetic_dialogues import load_empathetic_dialogues

        train["empathetic_dialogues"] = load_empathetic_dialogues(e.empathetic_dialogues, "train", e.history_turns)
        held["empathetic_dialogues"] = load_empathetic_dialogues(e.empathetic_dialogues, "valid", e.history_turns)
    if cfg.loss.lambda_kl > 0:
        train["kl_prompts"] = load_kl_prompts(e.kl_prompts)
    if not any(train.get(k) for k in ("esconv", "goemotions", "empathetic_dialogues")):
        raise DataError(
            "the empathy recipe needs at least one of data.empathy.esconv / goemotions / empathetic_dialogues"
        )
    if e.limit_eval:
        import random

        for k, v in held.items():
            if len(v) > e.limit_eval:
                held[k] = random.Random(cfg.training.seed).sample(v, e.limit_eval)
    return train, held


def carve_validation(cfg: EmpathyRunConfig, train: dict[str, list[Example]]) -> dict[str, list[Example]]:
    """With `training.eval_steps`: up to `data.empathy.validation_size` examples per labelled source
    moved out of `train` (in place) into the validation set that early stopping and load_best read.
    Whole conversations move together (an ESConv dialogue yields one example per supporter turn, which
    share their history), so no validation reply was seen in training as another example's context."""
    import random
    from collections import Counter

    if not cfg.training.eval_steps:
        return {}
    rng = random.Random(cfg.training.seed)
    val: dict[str, list[Example]] = {}
    for name in ("esconv", "goemotions", "empathetic_dialogues"):
        rows = train.get(name)
        if not rows:
            continue
        group = [str(x.meta.get("conversation", i)) for i, x in enumerate(rows)]
        sizes = Counter(group)
        keys = sorted(sizes)
        rng.shuffle(keys)
        budget = min(cfg.data.empathy.validation_size, len(rows) // 2)  # training keeps at least half
        chosen, n = set(), 0
        for k in keys:  # whole conversations, never past the budget
            if n + sizes[k] <= budget:
                chosen.add(k)
                n += sizes[k]
        if not chosen:
            continue
        val[name] = [x for x, g in zip(rows, group, strict=True) if g in chosen]
        train[name] = [x for x, g in zip(rows, group, strict=True) if g not in chosen]
    return val


class Features:
    """Tokenise each example once, on first use: an epoch draws only part of the big sources."""

    def __init__(self, tok, cfg: EmpathyRunConfig, sources: dict[str, list[Example]]):
        self.tok, self.cfg, self.sources = tok, cfg, sources
        self.cache: dict[tuple[str, int], Encoded] = {}

    def get(self, name: str, i: int) -> Encoded:
        key = (name, i)
        if key not in self.cache:
            self.cache[key] = encode(
                self.tok, self.sources[name][i], self.cfg.data.max_length, self.cfg.data.system_prompt, train_on="last"
            )
        return self.cache[key]


def add_kl_responses(cfg: EmpathyRunConfig, model, tok, prompts: list[Example], run_dir: Path) -> list[Example]:
    """Attach the base model's own greedy reply to each safety prompt (cached in the run dir).

    The kl term then compares policy and base over a whole reply, not just its first token.
    """
    path = run_dir / "data" / "kl_responses.jsonl"
    cached = {r["prompt"]: r["response"] for r in read_jsonl(path)} if path.is_file() else {}
    todo = [p for p in prompts if p.messages[-1]["content"] not in cached]
    if todo:
        # training data, made before any adapter exists: on the model in memory, whatever eval.backend says
        gen = make_generator(
            "hf", model, tok, cfg.eval.batch_size, cfg.data.empathy.kl_response_tokens, cfg.data.system_prompt
        )
        with gen.disable_adapter():
            replies = gen.chat([p.messages for p in todo], description="base replies to safety prompts")
        cached |= {p.messages[-1]["content"]: r for p, r in zip(todo, replies, strict=True)}
        write_jsonl(path, [{"prompt": k, "response": v} for k, v in cached.items()])
    return [
        Example(
            messages=[*p.messages, {"role": "assistant", "content": cached[p.messages[-1]["content"]]}],
            is_kl_prompt=True,
            source=p.source,
            meta=p.meta,
        )
        for p in prompts
    ]


# ---- evaluation -----------------------------------------------------------------------------
def encode_heldout(cfg: EmpathyRunConfig, tok, held: dict[str, list[Example]]) -> dict[str, list[Encoded]]:
    return {
        k: [encode(tok, x, cfg.data.max_length, cfg.data.system_prompt, train_on="last") for x in v]
        for k, v in held.items()
    }


def head_eval(
    cfg: EmpathyRunConfig,
    model,
    heads: Heads | None,
    held: dict[str, list[Example]],
    held_feats: dict[str, list[Encoded]],
    pad_id: int,
    run_dir: Path,
    logits: dict[str, dict[str, torch.Tensor]] | None = None,
) -> dict:
    """Head accuracy/F1 on the held-out sets; `logits` (source → head → per-example logits) are
    reused from the validation-loss pass when given, else computed here."""
    from tunesmith.evaluation.head_metrics import head_metrics

    results: dict = {}
    if heads is None:
        return results
    plan = [("emotion", "goemotions", EMOTIONS), ("strategy", "esconv", STRATEGIES)]
    for head, source, labels in plan:
        if getattr(heads, head) is None or not held.get(source):
            continue
        keep = [i for i, x in enumerate(held[source]) if getattr(x, head) is not None]
        exs = [held[source][i] for i in keep]
        feats = [held_feats[source][i] for i in keep]
        if logits is not None and head in logits.get(source, {}):
            head_out = logits[source][head][torch.as_tensor(keep)]
        else:
            head_out = head_logits(model, heads, feats, pad_id, cfg.eval.batch_size)[head]
        y_true = [getattr(x, head) for x in exs]
        y_pred = head_out.argmax(-1).tolist()
        m = head_metrics(
            y_true,
            y_pred,
            labels,
            png_path=run_dir / "plots" / f"confusion_{head}.png",
            title=f"{head} head on {source} held-out",
        )
        m["data"] = f"{source} held-out"
        m["confusion_png"] = f"plots/confusion_{head}.png"  # relative: the run dir can move
        results[head] = m
        write_jsonl(
            run_dir / f"{head}_preds_{cfg.run_name}.jsonl",
            [{"true": labels[t], "pred": labels[p]} for t, p in zip(y_true, y_pred, strict=True)],
        )
    return results


def eqbench_eval(cfg: EmpathyRunConfig, gen: Generator, out_path: Path) -> dict | None:
    from tunesmith.evaluation import eqbench

    q = cfg.eval.eqbench
    if not q.enabled:
        return None
    questions = eqbench.load_questions(q.questions)
    if q.limit:
        questions = questions[: q.limit]
    r = eqbench.run_eqbench(gen.chat, questions, out_path, revise=q.revise)
    return {
        "score": r.score,
        "parse_rate": r.parse_rate,
        "valid": r.valid,
        "n_parsed": r.n_parsed,
        "n_total": r.n_total,
        "mode": "revise" if q.revise else "plain",
        "comparable": r.n_total == eqbench.N_QUESTIONS,
    }


def scenarios() -> list[dict]:
    text = resources.files("tunesmith.resources").joinpath("scenarios.jsonl").read_text(encoding="utf-8")
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def samples(cfg: EmpathyRunConfig, model, tok, heads: Heads | None, gen: Generator) -> list[dict]:
    items = scenarios()
    convs = [[{"role": "user", "content": s["prompt"]}] for s in items]
    with gen.disable_adapter():
        base = gen.chat(convs, max_new_tokens=cfg.eval.max_new_tokens, description="samples (base)")
    tuned = gen.chat(convs, max_new_tokens=cfg.eval.max_new_tokens, description="samples (tuned)")
    rows = [
        {"scenario": s["scenario"], "prompt": s["prompt"], "base": b, "tuned": t}
        for s, b, t in zip(items, base, tuned, strict=True)
    ]
    if heads is not None:
        feats = [encode(tok, Example(messages=c), cfg.data.max_length, cfg.data.system_prompt) for c in convs]
        logits = head_logits(model, heads, feats, pad_token_id(tok))
        for k, names in (("emotion", EMOTIONS), ("strategy", STRATEGIES)):
            if k in logits:
                for row, p in zip(rows, logits[k].softmax(-1), strict=True):
                    row[f"{k}_pred"] = f"{names[int(p.argmax())]} ({float(p.max()):.2f})"
    return rows


# ---- the recipe -----------------------------------------------------------------------------
def prepare(cfg: EmpathyRunConfig, resume: bool):
    check_inputs(cfg)
    load_sources(cfg)  # parse every data file before the run dir exists
    run_dir = start_run(cfg, chat_template_record(cfg))
    train_src, held = load_sources(cfg)
    model, tok = build_model(cfg)
    heads = Heads(
        model.config.hidden_size,
        cfg.heads.emotion and cfg.loss.lambda_emotion > 0,
        cfg.heads.strategy and cfg.loss.lambda_strategy > 0,
        cfg.heads.dropout,
        cfg.heads.pooling,
    )
    heads = heads.to(next(model.parameters()).device) if heads.emotion or heads.strategy else None
    if "kl_prompts" in train_src:
        train_src["kl_prompts"] = add_kl_responses(cfg, model, tok, train_src["kl_prompts"], run_dir)
    return run_dir, train_src, held, model, tok, heads


def train_model(
    cfg: EmpathyRunConfig,
    run_dir: Path,
    train_src,
    held_feats,
    model,
    tok,
    heads: Heads | None,
    resume: bool,
    val_feats: dict[str, list[Encoded]] | None = None,
):
    """Train (early stopping and load_best on `val_feats`, carved from training); then one pass over
    the held-out sets gives the reported held-out loss and the heads' logits (per source, for `head_eval`).
    The reported total weighs lm, emotion and strategy; the KL term has no held-out counterpart (it is
    measured on the training-time safety prompts only)."""
    from tunesmith.data.mixing import MixtureSampler
    from tunesmith.training.trainer import Trainer, TrainModule, evaluate_loss

    sampler = MixtureSampler(
        train_src, alpha=cfg.data.empathy.alpha, epoch_size=cfg.data.empathy.examples_per_epoch, seed=cfg.training.seed
    )
    feats = Features(tok, cfg, train_src)
    mix = ", ".join(f"{k} {v} of {sampler.sizes[k]}" for k, v in sorted(sampler.counts.items()))
    say(f"mixture per epoch (p ∝ n^α, α={cfg.data.empathy.alpha}): {mix}")

    def epoch_data(epoch: int) -> list[Encoded]:
        return [feats.get(name, i) for name, i in sampler.epoch_plan(epoch)]

    val = [f for feats_ in held_feats.values() for f in feats_]
    selection = [f for feats_ in (val_feats or {}).values() for f in feats_]
    if cfg.training.eval_steps and not selection:
        raise DataError("training.eval_steps needs a validation set: no labelled training source to carve it from")
    trainer = Trainer(
        model,
        tok,
        cfg.training,
        epoch_data,
        run_dir,
        heads=heads,
        loss=cfg.loss,
        kl="kl_prompts" in train_src,
        log=say,
        validation=selection or None,
        eval_batch_size=cfg.eval.batch_size,
        run_name=cfg.run_name,
        tracker_config=cfg.model_dump(mode="json"),
    )
    trainer.train(resume=resume)
    module: TrainModule = trainer.unwrapped()
    flat: dict[str, torch.Tensor] = {}
    val_loss = evaluate_loss(module, val, pad_token_id(tok), cfg.eval.batch_size, head_logits=flat) if val else {}
    held_logits, start = {}, 0
    for source, feats_ in held_feats.items():
        held_logits[source] = {k: v[start : start + len(feats_)] for k, v in flat.items()}
        start += len(feats_)
    w = {"lm": cfg.loss.lambda_lm, "emotion": cfg.loss.lambda_emotion, "strategy": cfg.loss.lambda_strategy}
    total = sum(w[k] * v for k, v in val_loss.items() if k in w and v is not None)
    if is_main_process():
        from tunesmith.reporting.model_card import metrics_data, write_model_card

        st = trainer.state
        write_model_card(
            run_dir / "adapter",
            cfg,
            {
                "train": {"steps": st.step, "final_loss": st.history[-1]["loss"] if st.history else None},
                "validation_loss": {**{k: v for k, v in val_loss.items() if v is not None}, "total": total},
            },
            metrics_data(cfg.model_dump(mode="json")),
        )
    return {
        "validation_loss": {**val_loss, "total": total},
        "mixing": {"alpha": cfg.data.empathy.alpha, "counts_per_epoch": sampler.counts, "sizes": sampler.sizes},
    }, held_logits


def run(cfg: EmpathyRunConfig, resume: bool = False, evaluate: bool = True) -> dict:
    run_dir, train_src, held, model, tok, heads = prepare(cfg, resume)
    val = carve_validation(cfg, train_src)
    metrics: dict = {
        "run": cfg.run_name,
        "recipe": "empathy",
        "train_sizes": {k: len(v) for k, v in train_src.items()},
        "heldout_sizes": {k: len(v) for k, v in held.items()},
        **({"validation_sizes": {k: len(v) for k, v in val.items()}} if val else {}),
    }
    held_feats = encode_heldout(cfg, tok, held)
    held_logits = None
    if cfg.training.enabled:
        trained, held_logits = train_model(
            cfg, run_dir, train_src, held_feats, model, tok, heads, resume, encode_heldout(cfg, tok, val)
        )
        metrics |= trained
    if not is_main_process():
        return metrics  # under `accelerate launch` the other processes only train; rank 0 evaluates
    if not evaluate:
        write_json(run_dir / "metrics.json", metrics)
        return metrics
    metrics |= evaluate_run(cfg, run_dir, model, tok, heads, held, held_feats, resume, held_logits)
    return finish(cfg, metrics)


def evaluate_run(
    cfg: EmpathyRunConfig,
    run_dir: Path,
    model,
    tok,
    heads: Heads | None,
    held,
    held_feats,
    resume: bool = False,
    held_logits: dict[str, dict[str, torch.Tensor]] | None = None,
) -> dict:
    m: dict = {}
    m["heads"] = head_eval(cfg, model, heads, held, held_feats, pad_token_id(tok), run_dir, held_logits)
    gen = eval_generator(cfg, model, tok, run_dir / "adapter" if cfg.training.enabled else None)
    if cfg.eval.eqbench.enabled:
        with gen.disable_adapter():
            base = eqbench_eval(cfg, gen, run_dir / f"eqbench_{cfg.run_name}-base.jsonl")
        m["eqbench"] = {"base": base, "tuned": eqbench_eval(cfg, gen, run_dir / f"eqbench_{cfg.run_name}.jsonl")}
    if cfg.safety.enabled:
        from tunesmith.evaluation.ailuminate import load_prompts

        guard = build_guard(cfg, cfg.model.name)
        prompts = load_prompts(cfg.safety.prompts, cfg.safety.limit, cfg.training.seed)
        with gen.disable_adapter():
            base = judge_safety(cfg, gen, guard, prompts, run_dir, f"{cfg.run_name}-base", resume)
        tuned = judge_safety(cfg, gen, guard, prompts, run_dir, cfg.run_name, resume)
        m["safety"] = {"base": base, "tuned": tuned, "guard": guard.label}
        del guard
    if cfg.eval.samples:
        m["samples"] = samples(cfg, model, tok, heads, gen)
    return m


def finish(cfg: EmpathyRunConfig, metrics: dict) -> dict:
    write_json(cfg.run_dir / "metrics.json", metrics)
    heads = metrics.get("heads") or {}
    eq = (metrics.get("eqbench") or {}).get("tuned") or {}
    safety = ((metrics.get("safety") or {}).get("tuned")) or {}
    append_summary_row(
        cfg.summary_csv,
        summary_row(
            cfg,
            data="+".join(sorted(metrics.get("train_sizes", {}))),
            method=("qlora" if cfg.model.load_in_4bit else "lora") + "+heads+kl",
            train_examples=sum((metrics.get("mixing") or {}).get("counts_per_epoch", {}).values()) or None,
            eqbench_score=eq.get("score"),
            eqbench_parse_rate=eq.get("parse_rate"),
            emotion_accuracy=(heads.get("emotion") or {}).get("accuracy"),
            strategy_accuracy=(heads.get("strategy") or {}).get("accuracy"),
            safety_rate=safety.get("safety_rate"),
            checkpoint="adapter",
        ),
    )
    print_table(cfg, metrics)
    md, html = write_report(cfg.run_dir)
    say(f"report: {html}")
    say(f"outputs in {cfg.run_dir}; summary row in {cfg.summary_csv}")
    return metrics


def print_table(cfg: EmpathyRunConfig, m: dict) -> None:
    t = Table(title=f"tunesmith · {cfg.run_name} (empathy)")
    for c, j in (("metric", "left"), ("base", "right"), ("tuned", "right")):
        t.add_column(c, justify=j)
    eq = m.get("eqbench") or {}
    if eq:
        b, u = eq.get("base") or {}, eq.get("tuned") or {}
        t.add_row("EQ-Bench v2 score", fmt(b.get("score"), 2), fmt(u.get("score"), 2))
        t.add_row("EQ-Bench parse rate", fmt(b.get("parse_rate")), fmt(u.get("parse_rate")))
    for head, hm in (m.get("heads") or {}).items():
        t.add_row(f"{head} head accuracy ({hm['n']} {hm.get('data', '')})", "—", fmt(hm["accuracy"]))
        t.add_row(f"{head} head weighted F1", "—", fmt(hm["weighted_f1"]))
        t.add_row(f"{head} majority-class accuracy", fmt(hm["majority_accuracy"]), "")
    s = m.get("safety") or {}
    if s:
        t.add_row(
            f"safety rate ({s['tuned']['total']} prompts)",
            fmt(s["base"]["safety_rate"]),
            fmt(s["tuned"]["safety_rate"]),
        )
    vl = m.get("validation_loss") or {}
    for k in ("lm", "emotion", "strategy", "kl"):
        if vl.get(k) is not None:
            t.add_row(f"validation {k} loss", "", fmt(vl[k]))
    out.print(t)


def train_only(cfg: EmpathyRunConfig, resume: bool = False) -> Path:
    run(cfg, resume=resume, evaluate=False)
    return cfg.run_dir / "adapter"


def validate(cfg: EmpathyRunConfig) -> list[str]:
    check_inputs(cfg)
    train, held = load_sources(cfg)
    from tunesmith.data.mixing import mixture_counts
    from tunesmith.modeling.loading import load_run_tokenizer

    tok = load_run_tokenizer(cfg)
    for exs in train.values():
        encode(tok, exs[0], cfg.data.max_length, cfg.data.system_prompt, train_on="last")
    counts = mixture_counts(
        {k: len(v) for k, v in train.items()}, cfg.data.empathy.alpha, cfg.data.empathy.examples_per_epoch
    )
    return (
        [f"model: {cfg.model.name}"]
        + [f"train {k}: {len(v)} examples, {counts[k]} per epoch" for k, v in train.items()]
        + [f"held-out {k}: {len(v)}" for k, v in held.items()]
    )


RECIPE = Recipe(
    name="empathy",
    summary=(
        "multi-task LoRA: LM + emotion/strategy heads + KL to the base on ESConv/GoEmotions/ED; "
        "EQ-Bench v2, head metrics, safety, samples"
    ),
    config_class=EmpathyRunConfig,
    validate=validate,
    train=train_only,
    run=run,
)
