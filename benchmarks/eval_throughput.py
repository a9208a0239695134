#!/usr/bin/env python
"""Evaluation throughput: GSM8K greedy eval, tunesmith's batched engine vs one prompt at a time.

Both sides answer the same N GSM8K test questions (the first N of test.jsonl) with the same
k-shot chat prompts (the first k of the recipe's few-shot pool: 8 drawn from train.jsonl with seed
42), greedy, up to --max-new-tokens new tokens, stopping at the same end-of-turn ids:

  batched        tunesmith.recipes.gsm8k.evaluate_gsm8k with tunesmith.generation.hf.HFGenerator
                 (batch --batch-size, prompts sorted by length, left padding, KV cache) — the real
                 eval path, answer extraction and the per-batch JSONL writes included
  one at a time  a loop calling model.generate on one unpadded prompt per call (what a plain
                 script does), decoded and scored the same way

  lm-eval        lm-evaluation-harness's HF backend, HFLM.generate_until, on the same model object, the
                 same contexts (the chat-rendered prompt text; its tokenization is checked against ours),
                 stop sequences (the decoded end-of-turn tokens), max new tokens and batch size — a peer
                 that other people's numbers come from. Runs when lm-eval is installed (`pip install -e
                 '.[bench]'`); --no-lm-eval skips it.

Reported: questions/s and generated tokens/s of each (tokens up to, not including, the end-of-turn
token), strict accuracy of each, and how many outputs are identical token for token. Batched and
unbatched matmuls round differently in bf16, so greedy decoding can diverge after a near-tie; when
the benchmark dtype is bf16 and not every output matches, the identity check is repeated in fp32
(untimed; --fp32-check always|never overrides). Warm-up (one short generation on each path) is
excluded; with --rounds > 1 the two sides alternate which goes first and the median round counts.

Target from the performance issue (reported, never asserted in tests): batched >= 6x the
one-at-a-time questions/s with identical greedy outputs.

Usage:
  python benchmarks/eval_throughput.py                   # 32 questions, 1-shot, 128 new tokens
  python benchmarks/eval_throughput.py --quick           # seconds-long sanity run
  python benchmarks/eval_throughput.py -n 64 --k-shot 0 --json out.json
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
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_MODEL = "builtin:smollm2-135m-instruct"


def machine_info() -> dict:
    import importlib.metadata as md

    import torch

    from tunesmith.modeling.loading import cpu_has_fast_bf16

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    versions = {}
    for pkg in ("torch", "transformers", "peft"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "fast_bf16": cpu_has_fast_bf16(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": load,
        "python": platform.python_version(),
        "versions": versions,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def print_machine(m: dict) -> None:
    print(f"date     : {m['date']}")
    print(
        f"machine  : {m['cpu']}, {m['logical_cores']} logical cores, torch threads {m['torch_threads']}"
        f" (OMP_NUM_THREADS={m['omp_num_threads']}), fast bf16 (AMX/AVX512-bf16): {m['fast_bf16']}"
        + (f", GPU {m['cuda']}" if m["cuda"] else "")
    )
    print("versions : " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    if m["load_average"] is not None:
        la = m["load_average"][0]
        busy = "  (busy machine: timings unreliable)" if la > 0.5 * (m["logical_cores"] or 1) else ""
        print(f"load avg : {la:.2f}{busy}")


def synthetic_records(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b, c = rng.randrange(2, 50), rng.randrange(2, 50), rng.randrange(2, 9)
        out.append(
            {
                "question": f"Sam has {a} boxes with {c} pens each and buys {b} more pens. How many pens does he have?",
                "answer": f"{a} * {c} = {a * c} pens in boxes. {a * c} + {b} = {a * c + b}.\n#### {a * c + b}",
            }
        )
    return out


def load_questions(args) -> tuple[list[dict], list[dict], str]:
    """(test records, few-shot pool, description)."""
    from tunesmith.data.sources import gsm8k

    test_path = Path(args.test_path or SHARED / "gsm8k" / "test.jsonl")
    train_path = Path(args.train_path or SHARED / "gsm8k" / "train.jsonl")
    if test_path.is_file() and train_path.is_file():
        test = gsm8k.load_records(str(test_path))[: args.n]
        pool, _ = gsm8k.fewshot_pool(gsm8k.load_records(str(train_path)), 8, 42)
        return test, pool, f"GSM8K test ({test_path}): first {len(test)} questions, pool from {train_path}"
    return (
        synthetic_records(args.n, 1),
        synthetic_records(8, 2),
        f"synthetic arithmetic questions ({test_path} or {train_path} not found)",
    )


def build(args, dtype: str):
    from tunesmith.modeling.loading import add_lora, load_model, load_tokenizer

    tok = load_tokenizer(args.model)
    model = load_model(args.model, dtype)
    if args.with_lora:
        # a fresh adapter (B = 0: same outputs) so the LoRA layers' cost is part of the forward, as
        # in the recipes' post-training evaluation (adapter not merged)
        model = add_lora(model, 16, 32, 0.05, "auto")
    model.eval()
    return model, tok


def counting_generator(model, tok, batch_size: int, max_new: int):
    """tunesmith's Generator, keeping the ids it returns (in the caller's order) in `.outputs`."""
    from tunesmith.generation.hf import HFGenerator

    class Counting(HFGenerator):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.outputs: list[list[int]] = []

        def generate_ids(self, *a, **k):
            ids = super().generate_ids(*a, **k)
            self.outputs.extend(ids)
            return ids

    return Counting(model, tok, batch_size=batch_size, max_new_tokens=max_new)


def one_at_a_time(model, gen, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    """Plain greedy generate, one unpadded prompt per call."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p], device=device)
            g = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new,
                do_sample=False,
                num_beams=1,
                use_cache=True,
                pad_token_id=gen.pad_id,
                eos_token_id=gen.eos_ids,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            toks = g[0, len(p) :].tolist()
            cut = next((j for j, t in enumerate(toks) if t in gen.eos_ids), len(toks))
            out.append(toks[:cut])
    return out


def prompts_for(tok, test, pool, k) -> list[list[int]]:
    from tunesmith.data.chat import prompt_ids
    from tunesmith.data.sources import gsm8k

    shots = gsm8k.fewshot_turns(pool, k)
    return [prompt_ids(tok, shots + [{"role": "user", "content": r["question"]}]) for r in test]


def is_right(text: str, rec: dict) -> bool:
    from tunesmith.evaluation.gsm8k import extract_answer, is_correct

    return is_correct(extract_answer(text, "strict"), rec["answer"])


def accuracy(tok, test, ids: list[list[int]]) -> float:
    from tunesmith.data.sources import gsm8k
    from tunesmith.evaluation.gsm8k import extract_answer, is_correct

    texts = [tok.decode(t, skip_special_tokens=True).strip() for t in ids]
    return sum(
        is_correct(extract_answer(t, "strict"), gsm8k.gold_answer(r["answer"])) for t, r in zip(texts, test)
    ) / len(test)


def run_batched(model, tok, test, pool, args, tmp: Path, tag: str) -> tuple[float, list[list[int]], dict]:
    from tunesmith.recipes.gsm8k import evaluate_gsm8k

    gen = counting_generator(model, tok, args.batch_size, args.max_new_tokens)
    t0 = time.perf_counter()
    metrics = evaluate_gsm8k(gen, test, pool, args.k_shot, tmp / f"preds-{tag}.jsonl", args.max_new_tokens)
    return time.perf_counter() - t0, gen.outputs, metrics


def run_single(model, tok, prompts, args) -> tuple[float, list[list[int]]]:
    gen = counting_generator(model, tok, 1, args.max_new_tokens)
    t0 = time.perf_counter()
    ids = one_at_a_time(model, gen, prompts, args.max_new_tokens)
    return time.perf_counter() - t0, ids


def run_lm_eval(model, tok, prompts: list[list[int]], eos_ids: list[int], args) -> tuple[float, list[str], int]:
    """(seconds, answers, contexts whose lm-eval tokenization equals ours) from HFLM.generate_until."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(
        pretrained=model,
        tokenizer=tok,
        batch_size=args.batch_size,
        max_length=max(map(len, prompts)) + args.max_new_tokens,
    )
    contexts = [tok.decode(p) for p in prompts]
    same_ctx = sum(lm.tok_encode(c) == p for c, p in zip(contexts, prompts))
    until = sorted({tok.decode([e]) for e in eos_ids})
    reqs = [
        Instance(
            request_type="generate_until",
            doc={},
            idx=0,
            arguments=(c, {"until": until, "max_gen_toks": args.max_new_tokens, "do_sample": False}),
        )
        for c in contexts
    ]
    t0 = time.perf_counter()
    out = lm.generate_until(reqs, disable_tqdm=True)
    return time.perf_counter() - t0, [o.strip() for o in out], same_ctx


def identical(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(x == y for x, y in zip(a, b, strict=True))


def fp32_identity(args, test, pool) -> int:
    """Untimed: batched engine vs one at a time, both in fp32."""
    model, tok = build(args, "fp32")
    gen = counting_generator(model, tok, args.batch_size, args.max_new_tokens)
    prompts = prompts_for(tok, test, pool, args.k_shot)
    batched = gen.generate_ids(prompts, args.max_new_tokens)
    single = one_at_a_time(model, gen, prompts, args.max_new_tokens)
    return identical(batched, single)


def apply_quick(ap: argparse.ArgumentParser, args: argparse.Namespace, quick: dict) -> None:
    """--quick settings for every option left at its default (explicit flags win)."""
    for k, v in quick.items():
        if getattr(args, k) == ap.get_default(k):
            setattr(args, k, v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("-n", "--n", type=int, default=32, help="GSM8K test questions")
    ap.add_argument("--k-shot", type=int, default=1, choices=range(0, 9), metavar="{0..8}")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16, help="batched engine's batch size")
    ap.add_argument(
        "--dtype",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="auto: bf16 on AMX/AVX512-bf16 CPUs and CUDA, else fp32",
    )
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--fp32-check", choices=("auto", "always", "never"), default="auto")
    ap.add_argument(
        "--with-lora", action="store_true", help="attach a fresh (identity) LoRA adapter, as after training"
    )
    ap.add_argument("--test-path")
    ap.add_argument("--train-path")
    ap.add_argument("--quick", action="store_true", help="seconds-long sanity run (numbers meaningless)")
    ap.add_argument("--json", dest="json_out")
    ap.add_argument("--no-lm-eval", action="store_true", help="skip the lm-evaluation-harness peer")
    args = ap.parse_args(argv)
    if args.quick:
        apply_quick(ap, args, {"n": 4, "max_new_tokens": 16, "batch_size": 4, "rounds": 1})

    import torch

    from tunesmith.modeling.loading import pick_dtype

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    dtype = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[pick_dtype(args.dtype)]
    m = machine_info()
    print("== GSM8K evaluation throughput: batched engine vs one prompt at a time ==")
    print_machine(m)
    test, pool, described = load_questions(args)
    model, tok = build(args, dtype)
    prompts = prompts_for(tok, test, pool, args.k_shot)
    print(f"model    : {args.model}, {dtype}{' + LoRA adapter' if args.with_lora else ''}")
    print(f"data     : {described}")
    print(
        f"settings : {args.k_shot}-shot, greedy, max {args.max_new_tokens} new tokens, batched engine batch "
        f"{args.batch_size}; prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens; {args.rounds} round(s)"
    )
    if args.quick:
        print("quick    : tiny settings, numbers are meaningless")
    sys.stdout.flush()

    # warm-up: first-call overheads (allocations, kernel selection) stay out of the timings
    warm = counting_generator(model, tok, args.batch_size, 4)
    warm.generate_ids(prompts[: min(2, len(prompts))], 4)
    one_at_a_time(model, warm, prompts[:1], 4)

    rounds = []
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as tmp:
        for rnd in range(args.rounds):
            r: dict = {}
            for side in ("batched", "single") if rnd % 2 == 0 else ("single", "batched"):
                if side == "batched":
                    r["batched_s"], r["batched_ids"], r["batched_metrics"] = run_batched(
                        model, tok, test, pool, args, Path(tmp), str(rnd)
                    )
                else:
                    r["single_s"], r["single_ids"] = run_single(model, tok, prompts, args)
            r["identical"] = identical(r["batched_ids"], r["single_ids"])
            rounds.append(r)
            print(
                f"round {rnd + 1}: batched {r['batched_s']:.2f} s, one at a time {r['single_s']:.2f} s, "
                f"identical outputs {r['identical']}/{len(test)}"
            )
            sys.stdout.flush()

    peer = None
    if args.no_lm_eval or args.with_lora:
        print("lm-eval peer: skipped" + (" (--with-lora: HFLM takes a plain model)" if args.with_lora else ""))
    else:
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            print("lm-eval peer: skipped (lm-eval not installed: pip install -e '.[bench]')")
        else:
            gen = counting_generator(model, tok, args.batch_size, args.max_new_tokens)
            peer_s, peer_texts, same_ctx = run_lm_eval(model, tok, prompts, gen.eos_ids, args)
            ours = [tok.decode(t, skip_special_tokens=True).strip() for t in rounds[0]["batched_ids"]]
            peer = {
                "seconds": peer_s,
                "questions_per_s": len(test) / peer_s,
                "same_contexts": same_ctx,
                "identical_answers": sum(a == b for a, b in zip(ours, peer_texts, strict=True)),
                "strict_accuracy": sum(is_right(t, r) for t, r in zip(peer_texts, test)) / len(test),
            }
            print(
                f"lm-eval HFLM.generate_until: {peer_s:.2f} s, identical answers {peer['identical_answers']}/"
                f"{len(test)}, contexts tokenized identically {same_ctx}/{len(test)}"
            )
            sys.stdout.flush()

    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before any fp32 reload
    n = len(test)
    batched_s = statistics.median(r["batched_s"] for r in rounds)
    single_s = statistics.median(r["single_s"] for r in rounds)
    tok_b = sum(map(len, rounds[0]["batched_ids"]))
    tok_s = sum(map(len, rounds[0]["single_ids"]))
    same = min(r["identical"] for r in rounds)
    acc_b = rounds[0]["batched_metrics"]["strict_accuracy"]
    acc_s = accuracy(tok, test, rounds[0]["single_ids"])
    fp32_same = None
    if args.fp32_check == "always" or (args.fp32_check == "auto" and dtype != "fp32" and same < n):
        del model
        fp32_same = fp32_identity(args, test, pool)
    summary = {
        "questions": n,
        "dtype": dtype,
        "peak_rss_mib": peak_rss,
        "batched": {
            "seconds": batched_s,
            "questions_per_s": n / batched_s,
            "tokens_per_s": tok_b / batched_s,
            "generated_tokens": tok_b,
            "strict_accuracy": acc_b,
        },
        "one_at_a_time": {
            "seconds": single_s,
            "questions_per_s": n / single_s,
            "tokens_per_s": tok_s / single_s,
            "generated_tokens": tok_s,
            "strict_accuracy": acc_s,
        },
        "identical_outputs": same,
        "identical_outputs_fp32": fp32_same,
        "ratio_questions_per_s": (n / batched_s) / (n / single_s),
        "lm_eval": peer and {**peer, "ratio_batched_over_lm_eval": (n / batched_s) / peer["questions_per_s"]},
    }
    if args.json_out:
        out = {
            "benchmark": "eval_throughput",
            "machine": m,
            "settings": {
                "model": args.model,
                "n": n,
                "k_shot": args.k_shot,
                "max_new_tokens": args.max_new_tokens,
                "batch_size": args.batch_size,
                "dtype": dtype,
                "with_lora": args.with_lora,
                "rounds": args.rounds,
                "data": described,
                "quick": args.quick,
            },
            "rounds": [{k: v for k, v in r.items() if not k.endswith("_ids")} for r in rounds],
            "outputs": {"batched": rounds[0]["batched_ids"], "one_at_a_time": rounds[0]["single_ids"]},
            "summary": summary,
        }
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(out, indent=1))
        print(f"results written to {args.json_out}")

    b, s = summary["batched"], summary["one_at_a_time"]
    print(f"== summary ({n} questions, {dtype}; peak RSS {peak_rss:.0f} MiB) ==")
    if peer:  # before the three lines the quick test reads from the end
        print(
            f"lm-eval HFLM (batch {args.batch_size})     : {peer['questions_per_s']:.3f} questions/s; "
            f"ratio batched/lm-eval = {summary['lm_eval']['ratio_batched_over_lm_eval']:.2f}x; identical answers "
            f"{peer['identical_answers']}/{n}; strict accuracy {peer['strict_accuracy']:.3f}"
        )
    print(f"strict accuracy: batched {b['strict_accuracy']:.3f}, one at a time {s['strict_accuracy']:.3f}")
    ident = f"identical outputs ({dtype}): {same}/{n}"
    if fp32_same is not None:
        ident += f"; fp32: {fp32_same}/{n}"
    print(ident)
    print(
        f"batched (Generator, batch {args.batch_size}): {b['questions_per_s']:.3f} questions/s, "
        f"{b['tokens_per_s']:.1f} tokens/s"
    )
    print(f"one at a time (model.generate)  : {s['questions_per_s']:.3f} questions/s, {s['tokens_per_s']:.1f} tokens/s")
    ratio = summary["ratio_questions_per_s"]
    ok = ratio >= 6 and (same == n or fp32_same == n)
    print(
        f"ratio batched/one-at-a-time questions/s = {ratio:.2f}x (target >= 6x with identical greedy outputs: "
        f"{'met' if ok else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
