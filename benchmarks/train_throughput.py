#!/usr/bin/env python
"""Training throughput: tunesmith's LoRA trainer vs TRL's SFTTrainer at equal settings.

Configurations, each run in its own subprocess (so peak RSS is per configuration):
  a  tunesmith Trainer, LM loss only (heads and safety KL off)
  b  tunesmith Trainer with the emotion + strategy heads (lambda 0.2 each) and the safety KL
     against the adapter-disabled base (lambda 0.1), as in the empathy recipe
  c  TRL SFTTrainer, same model, LoRA, examples, batches, optimizer and schedule

Equal settings: the same model loaded by tunesmith.modeling.loading.load_model in the same dtype
(bf16 where the CPU has AMX/AVX512-bf16), the same LoRA (tunesmith.add_lora, r=16 alpha=32 dropout
0.05 on q/k/v/o, same seed), AdamW lr 2e-4, linear schedule without warm-up, grad-norm clip 1.0,
batch 4, grad_accum 1, gradient checkpointing off, no packing, no padding-free, no logging, no
eval, no saving inside the timed steps.

Same tokens: the parent process encodes the examples once with tunesmith.data.chat.encode
(assistant-only labels) and hands the token ids and labels to every worker. TRL gets them as a
pre-tokenized dataset with `input_ids` and `labels` columns, so its own chat templating and masking
(`assistant_only_loss` needs a template with generation markers, which SmolLM2's has not) play no
part, and both trainers compute the loss on exactly the same label tokens. TRL reads the rows with
`train_sampling_strategy="sequential"` in tunesmith's batch order (`batches_for_epoch`, same seed),
so every optimizer step of (a), (b) and (c) sees the same batch. The workers check this: the
non-pad tokens of each step must match the plan.

Lengths: `--lengths fixed` (default) takes the first records whose encoding has at least
`--seq-len` tokens and cuts them there, so every batch is exactly batch x seq-len real tokens (no
padding, identical shapes everywhere). `--lengths natural` takes the first records at their own
length (capped at seq-len); each trainer right-pads a batch to its longest row.

Tokens/s: tokens = non-pad tokens (attention-mask ones) of the optimizer step. Each worker runs
`--warmup` untimed steps and `--steps` timed ones; a step's time for tunesmith is the trainer's own
`step_seconds` (fetch + collate + forward + backward + clip + optimizer + scheduler), for TRL the
interval between consecutive `on_step_end` callbacks (everything the loop does for one step). The
configurations run `--rounds` times in alternating order (a c b, c b a, b a c, ...); the reported
tokens/s is the median over all timed steps of all rounds. Peak RSS is the worker's ru_maxrss
(model load included), the largest over rounds.

Targets from the performance issue (checked in the output, never asserted in tests):
  (a) >= 1.5x (c) tokens/s;  (b) costs <= 15% time over (a);  peak RSS (a) <= (c).

Packing (`--packing`): tunesmith's Trainer on the same GSM8K examples at their natural lengths, once
with length-grouped padded batches of --batch-size examples and once with training.packing (rows of
--batch-size x --seq-len tokens, one row per step, attention kept inside each example by restarting
position ids); tokens/s = non-pad tokens / the trainer's step_seconds over the timed steps, alternating
order over --rounds rounds, in one process.

Usage:
  python benchmarks/train_throughput.py                 # full run (~10 min on a 2-core CPU)
  python benchmarks/train_throughput.py --packing       # packed vs unpacked (~3 min on a 2-core CPU)
  python benchmarks/train_throughput.py --quick         # seconds-long sanity run
  python benchmarks/train_throughput.py --data esconv --lengths natural --json out.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_MODEL = "builtin:smollm2-135m-instruct"
CONFIGS = {
    "a": "tunesmith LM only",
    "b": "tunesmith heads+KL",
    "c": "TRL SFTTrainer",
}
# Latin square: over three rounds each configuration runs once first, once second, once last.
ORDERS = (("a", "c", "b"), ("c", "b", "a"), ("b", "a", "c"))


# ---- machine --------------------------------------------------------------------------------
def machine_info() -> dict:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from tunesmith.modeling.loading import cpu_has_fast_bf16

    try:
        load = os.getloadavg()
    except OSError:
        load = None
    versions = {}
    for pkg in ("torch", "transformers", "peft", "trl", "accelerate"):
        try:
            import importlib.metadata as md

            versions[pkg] = md.version(pkg)
        except Exception:
            versions[pkg] = None
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "fast_bf16": cpu_has_fast_bf16(),
        "load_average": load,
        "python": platform.python_version(),
        "versions": versions,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def print_machine(m: dict) -> None:
    v = m["versions"]
    print(f"date     : {m['date']}")
    print(
        f"machine  : {m['cpu']}, {m['logical_cores']} logical cores, torch threads {m['torch_threads']}"
        f" (OMP_NUM_THREADS={m['omp_num_threads']}), fast bf16 (AMX/AVX512-bf16): {m['fast_bf16']}"
    )
    print("versions : " + ", ".join(f"{k} {v[k]}" for k in v))
    if m["load_average"] is not None:
        la = m["load_average"][0]
        busy = "  (busy machine: timings unreliable)" if la > 0.5 * (m["logical_cores"] or 1) else ""
        print(f"load avg : {la:.2f}{busy}")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---- data (parent) --------------------------------------------------------------------------
def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    """GSM8K-shaped records of pseudo-text, used when ../shared/data is absent."""
    rng = random.Random(seed)
    words = (
        "apples boxes train station minutes dollars each total price more than half twice store "
        "garden weekly tickets friends pages book hours speed miles cost bought sold left"
    ).split()
    out = []
    for i in range(n):
        q = " ".join(rng.choice(words) for _ in range(8 + rng.randrange(12))).capitalize() + "?"
        steps = "\n".join(
            f"{' '.join(rng.choice(words) for _ in range(12))} {rng.randrange(100)} + {rng.randrange(100)} = "
            f"{rng.randrange(200)}."
            for _ in range(8 + rng.randrange(8))
        )
        out.append({"question": f"Q{i}: {q}", "answer": f"{steps}\n#### {rng.randrange(1000)}"})
    return out


def load_examples(args, want: int, tok):
    """Up to `want` Encoded examples following --data/--lengths, plus where they came from."""
    from tunesmith.data.chat import encode
    from tunesmith.data.sources import gsm8k

    if args.data == "esconv":
        from tunesmith.data.sources.esconv import load_esconv

        path = Path(args.data_path or SHARED / "esconv")
        if path.exists():
            examples, source = load_esconv(path, "train"), f"ESConv train ({path})"
        else:
            examples, source = None, f"synthetic text ({path} not found)"
        train_on = "last"
    else:
        path = Path(args.data_path or SHARED / "gsm8k" / "train.jsonl")
        if path.exists():
            examples, source = [gsm8k.to_example(r) for r in gsm8k.load_records(str(path))], f"GSM8K train ({path})"
        else:
            examples, source = None, f"synthetic text ({path} not found)"
        train_on = "all"
    if examples is None:
        examples = [gsm8k.to_example(r) for r in synthetic_records(max(want * 4, 64))]
    feats, scanned = [], 0
    for ex in examples:
        scanned += 1
        full = encode(tok, ex, 10**6, train_on=train_on)
        if args.lengths == "fixed" and len(full.input_ids) < args.seq_len:
            continue
        e = encode(tok, ex, args.seq_len, train_on=train_on)
        if e.n_labels < 2:
            continue
        feats.append(e)
        if len(feats) == want:
            break
    if len(feats) < want:
        raise SystemExit(
            f"only {len(feats)} of the {want} examples needed have {'>= ' if args.lengths == 'fixed' else ''}"
            f"{args.seq_len} tokens in {source}; lower --seq-len or --steps, or use --lengths natural"
        )
    return (
        feats,
        f"{source}: first {want} examples{f' of >= {args.seq_len} tokens' if args.lengths == 'fixed' else ''}"
        f" (scanned {scanned})",
    )


def plan(args, tok) -> dict:
    """Encode the examples once; the batches every configuration will see; (b)'s labels."""
    from tunesmith.training.trainer import batches_for_epoch

    n_steps = args.warmup + args.steps
    feats, described = load_examples(args, n_steps * args.batch_size, tok)
    batches = batches_for_epoch([len(e.input_ids) for e in feats], args.batch_size, args.seed, 0)
    assert len(batches) == n_steps
    # at least one safety row per batch whenever the share is > 0, so the KL path always runs
    n_safety = min(args.batch_size, max(1, round(args.safety_share * args.batch_size))) if args.safety_share > 0 else 0
    rows = []
    for e in feats:
        rows.append(
            {
                "input_ids": e.input_ids,
                "labels": e.labels,
                "pool_index": e.pool_index,
                "user_span": list(e.user_span),
                "emotion": e.emotion,
                "strategy": e.strategy,
            }
        )
    # (b): the first n_safety rows of each batch are safety rows (their labelled reply becomes the
    # KL positions, as the base model's reply to a safety prompt in the recipe); every other row
    # carries an emotion and a strategy label (real ones for ESConv, synthetic ones for GSM8K).
    b_extra = [None] * len(rows)
    for batch in batches:
        for j, i in enumerate(batch):
            if j < n_safety:
                b_extra[i] = {"is_kl_prompt": True, "emotion": None, "strategy": None}
            else:
                r = rows[i]
                b_extra[i] = {
                    "is_kl_prompt": False,
                    "emotion": r["emotion"] if r["emotion"] is not None else i % 28,
                    "strategy": r["strategy"] if r["strategy"] is not None else i % 8,
                }
    step_tokens = [sum(len(rows[i]["input_ids"]) for i in b) for b in batches]
    step_labels = [sum(sum(1 for x in rows[i]["labels"][1:] if x != -100) for i in b) for b in batches]
    return {
        "rows": rows,
        "b_extra": b_extra,
        "batches": batches,
        "step_tokens": step_tokens,
        "step_label_tokens": step_labels,
        "described": described,
        "n_safety_per_batch": n_safety,
    }


# ---- workers --------------------------------------------------------------------------------
def build_model(spec: dict):
    from transformers import set_seed

    from tunesmith.modeling.loading import add_lora, load_model, load_tokenizer

    tok = load_tokenizer(spec["model"])
    model = load_model(spec["model"], spec["dtype"])
    set_seed(spec["seed"])
    model = add_lora(model, spec["lora_r"], spec["lora_alpha"], spec["lora_dropout"], spec["targets"])
    return model, tok


def worker_tunesmith(spec: dict, config: str, run_dir: Path) -> dict:
    from tunesmith.config import LossConfig, TrainingConfig
    from tunesmith.data.chat import Encoded
    from tunesmith.modeling.heads import Heads
    from tunesmith.training.trainer import Trainer

    model, tok = build_model(spec)
    p = spec["plan"]
    feats = []
    for i, r in enumerate(p["rows"]):
        extra = p["b_extra"][i] if config == "b" else {"is_kl_prompt": False, "emotion": None, "strategy": None}
        feats.append(
            Encoded(
                input_ids=r["input_ids"],
                labels=r["labels"],
                pool_index=r["pool_index"],
                user_span=tuple(r["user_span"]),
                **extra,
            )
        )
    cfg = TrainingConfig(
        learning_rate=spec["lr"],
        batch_size=spec["batch_size"],
        grad_accum=1,
        max_steps=spec["warmup"] + spec["steps"],
        warmup_ratio=0.0,
        scheduler="linear",
        max_grad_norm=1.0,
        weight_decay=0.0,
        seed=spec["seed"],
        gradient_checkpointing=False,
        save_steps=None,
        save_total_limit=1,
    )
    heads = loss = None
    if config == "b":
        heads = Heads(model.config.hidden_size, emotion=True, strategy=True, dropout=0.1).to(model.device)
        loss = LossConfig(lambda_lm=1.0, lambda_emotion=0.2, lambda_strategy=0.2, lambda_kl=0.1)
    trainer = Trainer(
        model, tok, cfg, lambda epoch: feats, run_dir, heads=heads, loss=loss, kl=config == "b", log=lambda _m: None
    )
    rss_before = peak_rss_mib()
    trainer.train()  # ends with a checkpoint + adapter save: outside every step_seconds
    hist = trainer.state.history
    cum = [0] + [h["tokens"] for h in hist]
    return {
        "step_seconds": [h["step_seconds"] for h in hist],
        "step_tokens": [b - a for a, b in zip(cum, cum[1:])],
        "loss": [h["loss"] for h in hist],
        "peak_rss_before_train_mib": rss_before,
        "components": {k: hist[-1].get(k) for k in ("lm", "emotion", "strategy", "kl")},
    }


def worker_trl(spec: dict, run_dir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    model, tok = build_model(spec)
    p = spec["plan"]
    order = [i for b in p["batches"] for i in b]  # tunesmith's batch order, read sequentially
    ds = Dataset.from_dict(
        {"input_ids": [p["rows"][i]["input_ids"] for i in order], "labels": [p["rows"][i]["labels"] for i in order]}
    )
    bf16 = spec["trl_bf16"]
    args = SFTConfig(
        output_dir=str(run_dir),
        max_steps=spec["warmup"] + spec["steps"],
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=spec["lr"],
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        seed=spec["seed"],
        data_seed=spec["seed"],
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=False,
        packing=False,
        padding_free=False,
        max_length=spec["seq_len"],
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    ends: list[float] = []
    seen: list = []
    losses: list = []

    class StepTimes(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

    class Recording(SFTTrainer):
        # records each batch's non-pad tokens and loss as tensors (no sync, no extra work)
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            seen.append(inputs["attention_mask"].sum())
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append((out[0] if return_outputs else out).detach())
            return out

    trainer = Recording(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[StepTimes()])
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    checkpointing = getattr(base, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = getattr(base, "is_gradient_checkpointing", False)
    if checkpointing:
        raise RuntimeError("TRL turned gradient checkpointing on")
    prepared = trainer.train_dataset
    if (
        len(prepared) != len(ds)
        or prepared[0]["input_ids"] != ds[0]["input_ids"]
        or prepared[0]["labels"] != ds[0]["labels"]
    ):
        raise RuntimeError("TRL changed the pre-tokenized dataset during preparation")
    rss_before = peak_rss_mib()
    trainer.train()
    return {
        "step_seconds": [b - a for a, b in zip(ends, ends[1:])],
        "step_tokens": [int(x) for x in seen],
        "loss": [float(x) for x in losses],
        "peak_rss_before_train_mib": rss_before,
        "trl_bf16_autocast": bf16,
    }


def run_worker(args) -> None:
    spec = json.loads(Path(args.spec).read_text())
    with tempfile.TemporaryDirectory(prefix=f"bench-{args.worker}-") as tmp:
        if args.worker == "c":
            res = worker_trl(spec, Path(tmp))
        else:
            res = worker_tunesmith(spec, args.worker, Path(tmp))
    w = spec["warmup"]
    expected = spec["plan"]["step_tokens"]
    if res["step_tokens"] != expected:
        raise RuntimeError(f"config {args.worker} processed {res['step_tokens']} tokens per step, planned {expected}")
    timed_s, timed_tok = res["step_seconds"][w:], res["step_tokens"][w:]
    res.update(
        {
            "config": args.worker,
            "timed_step_seconds": timed_s,
            "tokens_per_s_steps": [t / s for t, s in zip(timed_tok, timed_s)],
            "tokens_per_s": statistics.median(t / s for t, s in zip(timed_tok, timed_s)),
            "peak_rss_mib": peak_rss_mib(),
        }
    )
    Path(args.result).write_text(json.dumps(res))


def packing_benchmark(args) -> int:
    """Packed vs unpacked tokens/s of tunesmith's Trainer on GSM8K-length data."""
    import torch

    from tunesmith.config import TrainingConfig
    from tunesmith.data.batching import pack_rows
    from tunesmith.modeling.loading import add_lora, load_model, load_tokenizer, pick_dtype
    from tunesmith.training.trainer import Trainer, batches_for_epoch

    args.lengths = "natural"
    tok = load_tokenizer(args.model)
    row = args.batch_size * args.seq_len
    n_steps = args.warmup + args.steps
    # enough examples that neither mode runs out within the timed steps (packed rows hold several)
    feats, described = load_examples(args, max(n_steps * args.batch_size * 3, 16), tok)
    lengths = [len(e.input_ids) for e in feats]
    unpacked_b = batches_for_epoch(lengths, args.batch_size, args.seed, 0)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in unpacked_b)
    rows = pack_rows(lengths, row, args.seed, 0)
    dtype = pick_dtype(args.dtype)
    m = machine_info()
    print("== training throughput: packed vs unpacked (tunesmith Trainer) ==")
    print_machine(m)
    print(
        f"model    : {args.model}, weights {str(dtype).removeprefix('torch.')}; LoRA r={args.lora_r} on {args.targets}"
    )
    print(f"data     : {described}; mean {statistics.mean(lengths):.0f} tokens, max {max(lengths)}")
    print(
        f"unpacked : length-grouped batches of {args.batch_size}, {sum(lengths) / padded:.1%} of the padded batch "
        "tokens are real"
    )
    print(
        f"packed   : rows of {row} tokens, {statistics.mean(len(r) for r in rows):.1f} examples per row, "
        f"{sum(lengths) / (len(rows) * row):.1%} of the row tokens are real"
    )
    sys.stdout.flush()
    results: dict[str, list[float]] = {"unpacked": [], "packed": []}
    for rnd in range(args.rounds):
        for mode in ("unpacked", "packed") if rnd % 2 == 0 else ("packed", "unpacked"):
            torch.manual_seed(args.seed)
            model = add_lora(
                load_model(args.model, args.dtype),
                args.lora_r,
                args.lora_alpha,
                args.lora_dropout,
                args.targets.split(","),
            )
            packed = mode == "packed"
            cfg = TrainingConfig(
                learning_rate=args.lr,
                batch_size=1 if packed else args.batch_size,
                max_steps=n_steps,
                packing=packed,
                report_to="none",
                save_total_limit=1,
                seed=args.seed,
            )
            with tempfile.TemporaryDirectory(prefix="pack-bench-") as tmp:
                st = Trainer(model, tok, cfg, lambda e: feats, tmp, log=lambda msg: None, pack_length=row).train()
            hist = st.history
            tokens = hist[-1]["tokens"] - hist[args.warmup - 1]["tokens"] if args.warmup else hist[-1]["tokens"]
            secs = sum(h["step_seconds"] for h in hist[args.warmup :])
            results[mode].append(tokens / secs)
            print(
                f"round {rnd + 1} {mode:<8}: {tokens / secs:8.1f} tokens/s ({tokens} tokens in {secs:.1f} s over "
                f"{args.steps} steps)"
            )
            sys.stdout.flush()
            del model
    u, p = statistics.median(results["unpacked"]), statistics.median(results["packed"])
    print("== summary (median over rounds) ==")
    print(f"unpacked: {u:8.1f} tokens/s")
    print(f"packed  : {p:8.1f} tokens/s  (packed/unpacked = {p / u:.2f})")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "benchmark": "train_throughput_packing",
                    "machine": m,
                    "data": described,
                    "results": results,
                    "summary": {"unpacked": u, "packed": p, "ratio": p / u},
                },
                indent=1,
            )
        )
    return 0


def apply_quick(ap: argparse.ArgumentParser, args: argparse.Namespace, quick: dict) -> None:
    """--quick settings for every option left at its default (explicit flags win)."""
    for k, v in quick.items():
        if getattr(args, k) == ap.get_default(k):
            setattr(args, k, v)


# ---- parent ---------------------------------------------------------------------------------
def spawn(config: str, spec_path: Path, tmp: Path, rnd: int) -> dict:
    result = tmp / f"result-{config}-{rnd}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        config,
        "--spec",
        str(spec_path),
        "--result",
        str(result),
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not result.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise SystemExit(f"worker {config} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(result.read_text()) | {"worker_wall_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=DEFAULT_MODEL, help="model reference (builtin:..., HF folder, .gguf, hub id)")
    ap.add_argument("--data", choices=("gsm8k", "esconv"), default="gsm8k")
    ap.add_argument("--data-path", help="GSM8K train.jsonl or ESConv folder (default: ../shared/data/...)")
    ap.add_argument("--lengths", choices=("fixed", "natural"), default="fixed")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per worker")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per worker")
    ap.add_argument("--rounds", type=int, default=3, help="runs of every configuration, order alternating")
    ap.add_argument("--configs", default="a,b,c", help="subset of a,b,c")
    ap.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="weights dtype for every configuration (auto: bf16 on AMX/AVX512-bf16 CPUs and CUDA)",
    )
    ap.add_argument(
        "--trl-bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="TRL's bf16=True (autocast); auto: on when the weights are bf16",
    )
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=int, default=32)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument(
        "--safety-share",
        type=float,
        default=0.25,
        help="(b): share of each batch that are safety rows (KL vs base); the recipe's mix draws "
        "~3%% safety prompts, so 0.25 (one row per batch of 4, KL every step) is an upper bound",
    )
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--quick", action="store_true", help="seconds-long sanity run (numbers meaningless)")
    ap.add_argument("--packing", action="store_true", help="packed vs unpacked tokens/s (see the module docstring)")
    ap.add_argument("--json", dest="json_out", help="write all results to this JSON file")
    ap.add_argument("--worker", choices=tuple(CONFIGS), help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    if args.quick:
        apply_quick(ap, args, {"seq_len": 64, "batch_size": 2, "warmup": 1, "steps": 2, "rounds": 1})
    if args.packing:
        return packing_benchmark(args)

    import torch

    from tunesmith.modeling.loading import load_tokenizer, pick_dtype

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not configs or any(c not in CONFIGS for c in configs):
        ap.error("--configs takes a comma-separated subset of a,b,c")
    dtype = pick_dtype(args.dtype)
    dtype_name = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    trl_bf16 = dtype == torch.bfloat16 if args.trl_bf16 == "auto" else args.trl_bf16 == "on"
    m = machine_info()
    print("== training throughput: tunesmith Trainer vs TRL SFTTrainer ==")
    print_machine(m)
    tok = load_tokenizer(args.model)
    p = plan(args, tok)
    print(f"model    : {args.model}, weights {dtype_name}; TRL bf16 autocast: {'on' if trl_bf16 else 'off'}")
    print(f"LoRA     : r={args.lora_r} alpha={args.lora_alpha} dropout={args.lora_dropout} on {args.targets}")
    print(
        f"training : batch {args.batch_size} x seq-len {args.seq_len} ({args.lengths} lengths), grad_accum 1, "
        f"AdamW lr {args.lr} linear, clip 1.0, checkpointing off, no packing"
    )
    print(f"data     : {p['described']}")
    print(
        f"tokens   : {statistics.mean(p['step_tokens']):.0f} non-pad tokens/step "
        f"({statistics.mean(p['step_label_tokens']):.0f} labelled); (b) {p['n_safety_per_batch']} safety row(s) per batch"
    )
    print(
        f"timing   : {args.warmup} warm-up + {args.steps} timed steps per worker, {args.rounds} round(s), "
        f"configs {','.join(configs)}"
    )
    if args.quick:
        print("quick    : tiny settings, numbers are meaningless")
    sys.stdout.flush()

    spec = {
        "model": args.model,
        "dtype": dtype_name,
        "seed": args.seed,
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "lora_dropout": args.lora_dropout,
        "targets": args.targets.split(","),
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "warmup": args.warmup,
        "steps": args.steps,
        "trl_bf16": trl_bf16,
        "plan": p,
    }
    results: dict[str, list[dict]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        for rnd in range(args.rounds):
            order = [c for c in ORDERS[rnd % len(ORDERS)] if c in configs]
            for c in order:
                r = spawn(c, spec_path, Path(tmp), rnd)
                results[c].append(r)
                print(
                    f"round {rnd + 1} ({c}) {CONFIGS[c]:<19}: {r['tokens_per_s']:8.1f} tokens/s (median step "
                    f"{statistics.median(r['timed_step_seconds']):.3f} s), peak RSS {r['peak_rss_mib']:.0f} MiB, "
                    f"step-1 loss {r['loss'][0]:.4f}, worker {r['worker_wall_s']:.0f} s"
                )
                sys.stdout.flush()

    summary = {}
    for c in configs:
        steps = [x for r in results[c] for x in r["tokens_per_s_steps"]]
        summary[c] = {
            "name": CONFIGS[c],
            "tokens_per_s": statistics.median(steps),
            "tokens_per_s_round_medians": [r["tokens_per_s"] for r in results[c]],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in results[c]),
            "peak_rss_before_train_mib": max(r["peak_rss_before_train_mib"] for r in results[c]),
        }
    ratios = {}
    if "a" in summary and "c" in summary:
        ratios["a/c"] = summary["a"]["tokens_per_s"] / summary["c"]["tokens_per_s"]
        ratios["rss a/c"] = summary["a"]["peak_rss_mib"] / summary["c"]["peak_rss_mib"]
    if "a" in summary and "b" in summary:
        ratios["b/a"] = summary["b"]["tokens_per_s"] / summary["a"]["tokens_per_s"]
    if args.json_out:
        out = {
            "benchmark": "train_throughput",
            "machine": m,
            "settings": {k: v for k, v in spec.items() if k != "plan"}
            | {
                "lengths": args.lengths,
                "data": p["described"],
                "rounds": args.rounds,
                "quick": args.quick,
                "step_tokens": p["step_tokens"],
                "step_label_tokens": p["step_label_tokens"],
                "safety_rows_per_batch_b": p["n_safety_per_batch"],
            },
            "runs": results,
            "summary": summary,
            "ratios": ratios,
        }
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(out, indent=1))
        print(f"results written to {args.json_out}")

    print("== summary (median over all timed steps; peak RSS = max over rounds) ==")
    for c in configs:
        s = summary[c]
        print(f"({c}) {s['name']:<19}: {s['tokens_per_s']:8.1f} tokens/s, peak RSS {s['peak_rss_mib']:.0f} MiB")
    if "a/c" in ratios:
        print(
            f"ratio a/c tokens/s = {ratios['a/c']:.2f} (target >= 1.5: {'met' if ratios['a/c'] >= 1.5 else 'NOT met'})"
        )
        print(
            f"ratio a/c peak RSS = {ratios['rss a/c']:.2f} (target <= 1.0: {'met' if ratios['rss a/c'] <= 1.0 else 'NOT met'})"
        )
    if "b/a" in ratios:
        cost = 1 / ratios["b/a"] - 1
        print(
            f"ratio b/a tokens/s = {ratios['b/a']:.2f} (heads+KL cost {cost:+.1%} time per token; "
            f"target <= +15%: {'met' if cost <= 0.15 else 'NOT met'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
