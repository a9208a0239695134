"""DPO training pieces (the `dpo` recipe in recipes/dpo.py runs them): a new LoRA adapter on top of the SFT model.

Model: the base model with the SFT adapter merged in (`dpo.sft_adapter`) is the frozen starting
point; TRL's DPOTrainer adds a fresh LoRA adapter (shape from the config's `lora:` section) and
trains only that. With `ref_model=None` and a `peft_config`, TRL 1.16 computes the reference
log-probs with the adapters disabled (`use_adapter(model, None)` → `disable_adapter()`), i.e. with
exactly the SFT model: no second copy of the weights is held, and the new adapter starts at B = 0,
so policy = reference at step 0.

Metric: the DPO implicit-reward margin on held-out pairs,
    margin = β·(log π(chosen) − log π_ref(chosen)) − β·(log π(rejected) − log π_ref(rejected)),
log-probs summed over the reply tokens, before and after training. Before training it is 0 by
construction (π = π_ref); after, it is β × the change of the policy's log-likelihood margin
log π(chosen) − log π(rejected), which is reported too (with the share of pairs where it is > 0).

Outputs in runs/<run_name>/: dpo_adapter/ (the new adapter; applies on top of base+SFT),
adapter/ (SFT and DPO combined into one LoRA on the base model — rank r_sft + r_dpo, exact — plus
the SFT run's heads.safetensors, so `tunesmith chat/predict/export --adapter runs/<run>/adapter`
work unchanged), metrics.json, training_history.json, config_resolved.json; a summary.csv row.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from tunesmith.config import DpoRunConfig
from tunesmith.data.chat import pad_token_id, with_system
from tunesmith.errors import ConfigError, ModelError
from tunesmith.io import require_file
from tunesmith.preference.pairs import load_pairs

TRAIN_MARGIN_SAMPLE = 256  # training pairs scored before/after (all of them when fewer)


# ---- data -----------------------------------------------------------------------------------
def split_pairs(cfg: DpoRunConfig) -> tuple[list[dict], list[dict]]:
    d = cfg.dpo
    if not d.pairs:
        raise ConfigError("dpo.pairs is not set: a prompt/chosen/rejected JSONL (`tunesmith pairs` writes one)")
    pairs = load_pairs(require_file(d.pairs, "preference pairs file (dpo.pairs)"))
    if d.heldout:
        held = load_pairs(require_file(d.heldout, "held-out pairs file (dpo.heldout)"))
        seen = {_key(p) for p in held}
        train = [p for p in pairs if _key(p) not in seen]
    else:
        order = list(range(len(pairs)))
        random.Random(cfg.training.seed).shuffle(order)
        n = min(d.heldout_size, len(pairs) - 1)
        held = [pairs[i] for i in sorted(order[:n])]
        train = [pairs[i] for i in sorted(order[n:])]
    if not train:
        raise ConfigError(f"{d.pairs}: no training pairs left after taking the held-out pairs")
    sp = cfg.data.system_prompt
    for p in train + held:
        p["prompt"] = with_system(p["prompt"], sp)
    return train, held


def _key(p: dict) -> tuple:
    return (tuple(m["content"] for m in p["prompt"]), p["chosen"][0]["content"], p["rejected"][0]["content"])


# ---- log-probs and margins ------------------------------------------------------------------
def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _chat_ids(tok, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    out = tok.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=True
    )
    return list(out["input_ids"])


def tokenize_pair(tok, pair: dict, max_length: int) -> tuple[list[int], int, list[int], int]:
    """(chosen ids, chosen completion start, rejected ids, rejected completion start), tokenized as
    TRL's DPOTrainer does: the reply starts where prompt and prompt+reply token ids diverge, and
    the sequence keeps its first `max_length` tokens."""
    prompt = _chat_ids(tok, pair["prompt"], add_generation_prompt=True)
    chosen = _chat_ids(tok, pair["prompt"] + pair["chosen"])
    rejected = _chat_ids(tok, pair["prompt"] + pair["rejected"])
    start = min(_common_prefix(prompt, chosen), _common_prefix(prompt, rejected), len(prompt))
    return chosen[:max_length], start, rejected[:max_length], start


@torch.no_grad()
def sequence_logps(model, seqs: list[tuple[list[int], int]], pad_id: int, batch_size: int = 8) -> torch.Tensor:
    """Σ log p(token) over each sequence's completion tokens (positions ≥ start)."""
    from tunesmith.modeling.forward import causal_lm, decoder_hidden

    device = next(model.parameters()).device
    lm_head = causal_lm(model).get_output_embeddings()
    out = torch.zeros(len(seqs), dtype=torch.float64)
    for b in range(0, len(seqs), batch_size):
        chunk = seqs[b : b + batch_size]
        width = max(len(s) for s, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        target = torch.zeros((len(chunk), width), dtype=torch.bool)
        for r, (s, start) in enumerate(chunk):
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
            target[r, max(start, 1) : len(s)] = True
        hidden = decoder_hidden(model, ids.to(device), mask.to(device))
        sel = target[:, 1:].to(device)  # position t predicts token t+1
        logits = lm_head(hidden[:, :-1][sel]).float()
        lp = logits.log_softmax(-1).gather(-1, ids[:, 1:].to(device)[sel][:, None])[:, 0]
        per_token = torch.zeros(sel.shape, dtype=torch.float32, device=device)
        per_token[sel] = lp
        out[b : b + len(chunk)] = per_token.double().sum(1).cpu()
    return out


def preference_margins(model, tok, pairs: list[dict], beta: float, max_length: int, batch_size: int = 8) -> dict:
    """DPO implicit-reward margin of `model` (adapter on) against itself with the adapter off."""
    if not pairs:
        return {"n": 0}
    pad = pad_token_id(tok)
    toks = [tokenize_pair(tok, p, max_length) for p in pairs]
    seqs = [(c, cs) for c, cs, _, _ in toks] + [(r, rs) for _, _, r, rs in toks]
    was = model.training
    model.eval()
    try:
        pol = sequence_logps(model, seqs, pad, batch_size)
        with model.disable_adapter():
            ref = sequence_logps(model, seqs, pad, batch_size)
    finally:
        model.train(was)
    n = len(pairs)
    pc, pr, rc, rr = pol[:n], pol[n:], ref[:n], ref[n:]
    reward_c, reward_r = beta * (pc - rc), beta * (pr - rr)
    m = reward_c - reward_r
    lm = pc - pr

    def f(x):
        return round(float(x), 6)

    return {
        "n": n,
        "reward_margin": f(m.mean()),
        "reward_accuracy": f((m > 0).double().mean()),
        "chosen_reward": f(reward_c.mean()),
        "rejected_reward": f(reward_r.mean()),
        "logp_margin": f(lm.mean()),
        "logp_accuracy": f((lm > 0).double().mean()),
        "ref_logp_margin": f((rc - rr).mean()),
    }


# ---- model ----------------------------------------------------------------------------------
def load_start_model(cfg: DpoRunConfig):
    """(tokenizer, base model with the SFT adapter merged in, SFT adapter dir or None)."""
    from tunesmith.modeling.loading import load_run_model, load_run_tokenizer

    sft = Path(cfg.dpo.sft_adapter) if cfg.dpo.sft_adapter else None
    if sft is not None and not (sft / "adapter_config.json").is_file():
        raise ModelError(f"dpo.sft_adapter: {sft} is not an adapter folder (no adapter_config.json)")
    tok = load_run_tokenizer(cfg)
    model = load_run_model(cfg)
    if sft is not None:
        from peft import PeftModel

        if getattr(model, "is_loaded_in_4bit", False):
            raise ConfigError("dpo.sft_adapter cannot be merged into a 4-bit model; set model.load_in_4bit: false")
        model = PeftModel.from_pretrained(model, sft).merge_and_unload()
    return tok, model, sft


def dpo_args(cfg: DpoRunConfig, out_dir: Path, dtype: torch.dtype):
    from trl import DPOConfig

    d, t = cfg.dpo, cfg.training
    return DPOConfig(
        output_dir=str(out_dir),
        beta=d.beta,
        loss_type=[d.loss_type],
        label_smoothing=d.label_smoothing,
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,
        max_grad_norm=t.max_grad_norm or 0.0,
        weight_decay=t.weight_decay,
        max_length=cfg.data.max_length,
        gradient_checkpointing=t.gradient_checkpointing,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        run_name=cfg.run_name,
        # tensorboard goes through our own callback (its event files must outlive TRL's scratch output_dir)
        report_to=[x for x in t.trackers if x != "tensorboard"] or "none",
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=True,
        remove_unused_columns=True,
        ddp_find_unused_parameters=False,
    )


def lora_config(cfg: DpoRunConfig, model):
    from peft import LoraConfig

    from tunesmith.modeling.loading import lora_targets

    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=lora_targets(model, cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )


def build_trainer(cfg: DpoRunConfig, model, tok, train: list[dict], out_dir: Path):
    from datasets import Dataset
    from transformers import set_seed
    from trl import DPOTrainer

    set_seed(cfg.training.seed)  # the new adapter's initialisation
    data = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in train])
    dtype = next(model.parameters()).dtype
    callbacks = []
    if "tensorboard" in cfg.training.trackers:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        # run_dir/tensorboard/<run>, where the tunesmith trainer writes its event files too
        callbacks.append(TensorBoardCallback(SummaryWriter(str(out_dir.parent / "tensorboard" / cfg.run_name))))
    return DPOTrainer(
        model=model,
        ref_model=None,
        args=dpo_args(cfg, out_dir, dtype),
        train_dataset=data,
        callbacks=callbacks,
        processing_class=tok,
        peft_config=lora_config(cfg, model),
    )
