"""Batches of encoded examples: right-padded training/scoring batches, length-sorted order, and
packed rows (several examples per row, attention kept inside each)."""

from __future__ import annotations

import random

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


def collate_packed(rows: list[list[Encoded]], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows of several examples each, with position ids restarting at every example.

    Without an attention mask, transformers reads the restarts as packed sequences and keeps
    attention inside each one (a block-diagonal causal mask for sdpa/eager, varlen kernels for
    flash attention). Labels are the examples' own, except each example's first token, which a
    row's previous example would otherwise predict (unpacked, position 0 is never a target).
    The padding tail is one more "example" of its own with no labels.
    """
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for e in row:
            L = len(e.input_ids)
            ids[r, at : at + L] = torch.tensor(e.input_ids)
            labels[r, at + 1 : at + L] = torch.tensor(e.labels[1:])
            pos[r, at : at + L] = torch.arange(L)
            mask[r, at : at + L] = 1
            at += L
        pos[r, at:] = torch.arange(width - at)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "position_ids": pos,
        "pool_index": torch.zeros(n, dtype=torch.long),
        "user_span": torch.zeros((n, 2), dtype=torch.long),
        "emotion": torch.full((n,), -1),
        "strategy": torch.full((n,), -1),
        "kl_mask": torch.zeros((n, width), dtype=torch.bool),
    }


def pack_rows(lengths: list[int], capacity: int, seed: int, epoch: int) -> list[list[int]]:
    """Best-fit-decreasing packing of example indices into rows of at most `capacity` tokens, the rows
    in a seeded random order (a pure function of (seed, epoch), so a resumed run replays it)."""
    import bisect

    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (tokens left, row), sorted
    for i in order:
        k = bisect.bisect_left(free, (lengths[i], -1))
        if k < len(free):
            left, r = free.pop(k)
            rows[r].append(i)
            left -= lengths[i]
        else:
            rows.append([i])
            r, left = len(rows) - 1, capacity - lengths[i]
        if left > 0:
            bisect.insort(free, (left, r))
    rng = random.Random(seed * 1_000_003 + epoch)
    for row in rows:
        rng.shuffle(row)
    rng.shuffle(rows)
    return rows
