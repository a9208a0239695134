"""Batches of encoded examples: right-padded training/scoring batches and length-sorted order."""

from __future__ import annotations

import torch

from tunesmith.data.chat import IGNORE, Encoded


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in items)
    n = len(items)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for r, e in enumerate(items):
        L = len(e.input_ids)
        ids[r, :L] = torch.tensor(e.input_ids)
        labels[r, :L] = torch.tensor(e.labels)
        mask[r, :L] = 1
    kl_rows = torch.tensor([e.is_kl_prompt for e in items])
    # KL-prompt rows' labelled tokens are the base model's own reply: KL positions, never LM targets
    lm_labels = labels.masked_fill(kl_rows[:, None], IGNORE)
    pool = torch.tensor([e.pool_index for e in items])
    kl_mask = torch.zeros((n, width), dtype=torch.bool)
    kl_mask[:, :-1] = labels[:, 1:] != IGNORE
    kl_mask[torch.arange(n), pool] = True
    kl_mask &= kl_rows[:, None]
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": lm_labels,
        "pool_index": pool,
        "user_span": torch.tensor([e.user_span for e in items]),
        "emotion": torch.tensor([-1 if e.emotion is None else e.emotion for e in items]),
        "strategy": torch.tensor([-1 if e.strategy is None else e.strategy for e in items]),
        "kl_mask": kl_mask,
    }


def sorted_batches(features: list[Encoded], batch_size: int) -> list[list[int]]:
    """Indices of `features` in batches of similar length (inference passes: less padding per batch)."""
    order = sorted(range(len(features)), key=lambda i: len(features[i].input_ids))
    return [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
