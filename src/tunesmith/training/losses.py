"""Loss terms, each returned as (sum, count) so the trainer can normalise over a whole
accumulation window (and across processes) instead of averaging per micro-batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_nll_sum(hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module) -> torch.Tensor:
    """Summed next-token NLL over labelled positions.

    Only the positions that carry a label go through the LM head, so the (tokens × vocabulary)
    logits tensor is never built for prompt tokens.
    """
    targets = labels[:, 1:]
    sel = targets != -100
    if not sel.any():
        return hidden.sum() * 0.0
    h = hidden[:, :-1][sel]
    logits = lm_head(h).float()
    return F.cross_entropy(logits, targets[sel], reduction="sum")


def kl_policy_base_sum(policy_logits: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
    """Σ_positions KL(policy ‖ base) = Σ p_policy · (log p_policy − log p_base).

    Policy-first (the "reverse" KL used as the RLHF penalty): it is large wherever the tuned model
    puts mass the base model would not, which is the drift we want to stop on safety prompts.
    """
    logp = F.log_softmax(policy_logits.float(), dim=-1)
    logq = F.log_softmax(base_logits.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum()


def head_ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over rows whose label is set (label < 0 means none)."""
    sel = labels >= 0
    if not sel.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[sel].float(), labels[sel], reduction="sum")
