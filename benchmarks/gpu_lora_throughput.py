#!/usr/bin/env python
"""GPU LoRA training throughput on a Qwen3-architecture model with random weights (no download).

The model is built from a Qwen3Config (--size preset, or --hidden/--layers/... overrides) directly
on the GPU in bf16, with SDPA (default) or FlashAttention-2 attention, and gets a LoRA adapter
(r=16, alpha=32, dropout 0.05) on every q/k/v/o/gate/up/down projection via tunesmith's add_lora.
Each step trains on a batch of random token ids (batch x seq-len, no padding, every position
labelled) with AdamW (lr 2e-4) on the LoRA weights:

  --engine tunesmith  tunesmith's TrainModule forward (decoder, then the LM head only at labelled
                      positions; summed NLL / label count), the trainer's own loss path
  --engine hf         model(input_ids, labels=...) with the Transformers loss

Reported: tokens/s (median over the timed steps, CUDA-synchronised; warm-up steps excluded), peak
GPU memory (torch.cuda.max_memory_allocated, and reserved), and model-FLOPs utilisation:

  FLOPs/token = 4·N_base + 6·N_lora + 12·L·S·d_attn
    N_base  weights of every matmul in the base model (all projections + the LM head; the input
            embedding is a lookup, not counted). Forward 2·N_base; backward 2·N_base for the
            activation gradients only: frozen weights get no weight gradients (full fine-tuning
            would be 6·N).
    N_lora  LoRA A/B weights: forward 2, backward 2 (activations) + 2 (weight gradients).
    12·L·S·d_attn  attention scores and weighted values (QK^T and AV: 2 matmuls x 2 FLOPs x S
            keys x d_attn = heads·head_dim per token per layer), x3 for forward + backward;
            PaLM convention, no discount for the causal mask.
  MFU = FLOPs/token x tokens/s / peak bf16 dense FLOP/s (--peak-tflops, or by device name:
        H100 SXM/H200 989, H100 PCIe 756, H100 NVL 835, A100 312, L40S 362, L4 121, A10 125).
  Recomputation under --gradient-checkpointing is not counted (model FLOPs, not hardware FLOPs).

Without CUDA the script prints why and exits with status 2 (--allow-cpu runs the code path on the
CPU for testing; no MFU then).

Usage:
  python benchmarks/gpu_lora_throughput.py                        # Qwen3-1.7B shape, batch 4 x 2048
  python benchmarks/gpu_lora_throughput.py --size 8b --batch-size 4 --gradient-checkpointing
  python benchmarks/gpu_lora_throughput.py --hidden 2048 --layers 24 --attn flash_attention_2
  python benchmarks/gpu_lora_throughput.py --quick                # seconds-long sanity run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

# Qwen3 release shapes (config.json of Qwen/Qwen3-*): hidden, intermediate, layers, heads, kv heads, tied
SIZES = {
    "0.6b": dict(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
    "1.7b": dict(
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
    "4b": dict(
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=True,
    ),
    "8b": dict(
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    ),
    # seconds-long sanity run
    "tiny": dict(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    ),
}
# dense bf16 tensor-core peak, FLOP/s; first matching substring of torch.cuda.get_device_name() wins
PEAKS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
)


def machine_info(device: str) -> dict:
    import importlib.metadata as md

    import torch

    info = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu_cores": os.cpu_count(),
        "device": device,
    }
    for pkg in ("transformers", "peft", "flash_attn"):
        try:
            info[pkg] = md.version(pkg.replace("_", "-"))
        except md.PackageNotFoundError:
            info[pkg] = None
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_memory_gib=p.total_memory / 2**30,
            capability=f"{p.major}.{p.minor}",
            gpu_count=torch.cuda.device_count(),
        )
    return info


def peak_flops(name: str | None) -> float | None:
    if not name:
        return None
    for key, flops in PEAKS:
        if key.lower() in name.lower():
            return flops
    return None


def build_config(args):
    from transformers import Qwen3Config

    shape = dict(SIZES[args.size])
    for flag, key in (
        ("hidden", "hidden_size"),
        ("intermediate", "intermediate_size"),
        ("layers", "num_hidden_layers"),
        ("heads", "num_attention_heads"),
        ("kv_heads", "num_key_value_heads"),
    ):
        if getattr(args, flag) is not None:
            shape[key] = getattr(args, flag)
    if args.hidden is not None and args.intermediate is None:
        shape["intermediate_size"] = 3 * args.hidden
    return Qwen3Config(
        vocab_size=args.vocab,
        head_dim=args.head_dim,
        max_position_embeddings=max(4096, args.seq_len),
        use_cache=False,
        **shape,
    )


def count_flops(model, config, seq_len: int) -> dict:
    import torch

    n_base = n_lora = 0
    for name, mod in model.named_modules():  # each Linear module is one matmul, tied weights or not
        if isinstance(mod, torch.nn.Linear):
            if "lora_" in name:
                n_lora += mod.weight.numel()
            else:
                n_base += mod.weight.numel()  # the LM head counts even when tied: it is a matmul
    d_attn = config.num_attention_heads * config.head_dim
    attn = 12 * config.num_hidden_layers * seq_len * d_attn
    return {
        "n_base_matmul": n_base,
        "n_lora": n_lora,
        "attention_per_token": attn,
        "flops_per_token": 4 * n_base + 6 * n_lora + attn,
    }


def apply_quick(ap: argparse.ArgumentParser, args: argparse.Namespace, quick: dict) -> None:
    """--quick settings for every option left at its default (explicit flags win)."""
    for k, v in quick.items():
        if getattr(args, k) == ap.get_default(k):
            setattr(args, k, v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", choices=tuple(SIZES), default="1.7b", help="Qwen3 shape preset")
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--intermediate", type=int, help="default with --hidden: 3 x hidden")
    ap.add_argument("--layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=int, default=32)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--targets", default="auto", help="auto = q/k/v/o/gate/up/down, 'attention', or a comma list")
    ap.add_argument("--attn", default="sdpa", choices=("sdpa", "flash_attention_2", "eager"))
    ap.add_argument("--engine", choices=("tunesmith", "hf"), default="tunesmith")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--peak-tflops", type=float, help="device's dense bf16 peak in TFLOP/s (default: by device name)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU (testing only)")
    ap.add_argument("--quick", action="store_true", help="tiny model, seconds-long sanity run")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args(argv)
    if args.quick:
        apply_quick(
            ap,
            args,
            {"size": "tiny", "batch_size": 2, "seq_len": 256, "warmup": 1, "steps": 3, "vocab": 32000, "head_dim": 64},
        )

    import torch

    if torch.cuda.is_available():
        device = "cuda"
    elif args.allow_cpu:
        device = "cpu"
    else:
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        print(
            f"gpu_lora_throughput: needs a CUDA GPU, but {why} (torch {torch.__version__}). "
            "Run it on a GPU machine (or pass --allow-cpu to exercise the code path on the CPU).",
            file=sys.stderr,
        )
        return 2

    from tunesmith.modeling.loading import add_lora
    from tunesmith.training.trainer import TrainModule

    m = machine_info(device)
    config = build_config(args)
    dtype = torch.bfloat16
    print("== GPU LoRA training throughput (Qwen3 architecture, random weights) ==")
    print(f"date     : {m['date']}")
    if device == "cuda":
        print(
            f"device   : {m['gpu']} x{m['gpu_count']} ({m['gpu_memory_gib']:.0f} GiB, sm {m['capability']}), "
            f"torch {m['torch']} CUDA {m['cuda']}, transformers {m['transformers']}, peft {m['peft']}, "
            f"flash-attn {m['flash_attn']}"
        )
    else:
        print(
            f"device   : CPU ({m['cpu_cores']} cores) -- --allow-cpu test run, not a GPU measurement; "
            f"torch {m['torch']}"
        )
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=args.attn)
    targets = args.targets if args.targets in ("auto", "attention") else args.targets.split(",")
    model = add_lora(model, args.lora_r, args.lora_alpha, args.lora_dropout, targets, args.gradient_checkpointing)
    model.train()
    build_s = time.perf_counter() - t0
    fl = count_flops(model, config, args.seq_len)
    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(
        f"model    : Qwen3 hidden {config.hidden_size}, {config.num_hidden_layers} layers, heads "
        f"{config.num_attention_heads}/{config.num_key_value_heads} x {config.head_dim}, intermediate "
        f"{config.intermediate_size}, vocab {config.vocab_size}, tied {config.tie_word_embeddings}: "
        f"{n_total / 1e9:.3f} B params ({n_train / 1e6:.1f} M trainable LoRA), bf16, attention {args.attn}"
    )
    print(
        f"training : LoRA r={args.lora_r} alpha={args.lora_alpha} on {targets}, batch {args.batch_size} x "
        f"{args.seq_len} random tokens, engine {args.engine}, gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}, AdamW lr 2e-4; {args.warmup} warm-up + {args.steps} "
        f"timed steps (built in {build_s:.1f} s)"
    )
    if args.quick:
        print("quick    : tiny settings, numbers are meaningless")
    sys.stdout.flush()

    module = TrainModule(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    B, S = args.batch_size, args.seq_len
    g = torch.Generator(device="cpu").manual_seed(args.seed)
    weights_mib = torch.cuda.memory_allocated() / 2**20 if device == "cuda" else None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    times, losses = [], []
    for step in range(args.warmup + args.steps):
        ids = torch.randint(0, config.vocab_size, (B, S), generator=g).to(device)
        mask = torch.ones_like(ids)
        sync()
        t = time.perf_counter()
        if args.engine == "tunesmith":
            out = module(
                input_ids=ids,
                attention_mask=mask,
                labels=ids,
                pool_index=torch.zeros(B, dtype=torch.long, device=device),
                user_span=torch.zeros(B, 2, dtype=torch.long, device=device),
                emotion=torch.full((B,), -1, device=device),
                strategy=torch.full((B,), -1, device=device),
                kl_mask=torch.zeros(B, S, dtype=torch.bool, device=device),
            )
            loss = out["lm"] / (B * (S - 1))
        else:
            loss = model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        dt_s = time.perf_counter() - t
        losses.append(float(loss.detach()))
        if step >= args.warmup:
            times.append(dt_s)

    step_s = statistics.median(times)
    tok_s = B * S / step_s
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (peak_flops(m.get("gpu")) if device == "cuda" else None)
    mfu = fl["flops_per_token"] * tok_s / peak if peak else None
    mem = {
        "weights_mib": weights_mib,
        "max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        "max_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if device == "cuda" else None,
    }
    result = {
        "benchmark": "gpu_lora_throughput",
        "machine": m,
        "settings": vars(args) | {"targets": targets},
        "model": {"params": n_total, "trainable": n_train, **fl},
        "step_seconds": times,
        "losses": losses,
        "tokens_per_s": tok_s,
        "memory": mem,
        "peak_flops": peak,
        "mfu": mfu,
    }
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=1))
        print(f"results written to {args.json_out}")
    print("== summary ==")
    print(
        f"loss (random tokens, ~ln vocab = {__import__('math').log(config.vocab_size):.2f}): first {losses[0]:.3f}, "
        f"last {losses[-1]:.3f}"
    )
    print(
        f"model FLOPs/token = 4*{fl['n_base_matmul'] / 1e9:.3f}e9 + 6*{fl['n_lora'] / 1e6:.2f}e6 + "
        f"attention {fl['attention_per_token'] / 1e9:.3f}e9 = {fl['flops_per_token'] / 1e9:.3f} GFLOP"
    )
    if device == "cuda":
        print(
            f"peak GPU memory: {mem['max_allocated_mib'] / 1024:.2f} GiB allocated, {mem['max_reserved_mib'] / 1024:.2f} GiB "
            f"reserved (weights + adapter {weights_mib / 1024:.2f} GiB)"
        )
    print(f"step time (median of {len(times)}): {step_s:.3f} s")
    if mfu is not None:
        print(f"MFU = {mfu:.1%} of {peak / 1e12:.0f} TFLOP/s bf16 dense")
    else:
        print(
            "MFU = n/a ("
            + ("CPU run" if device == "cpu" else f"unknown peak for {m.get('gpu')}: pass --peak-tflops")
            + ")"
        )
    print(f"tokens/s = {tok_s:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
