"""Mixed precision for LoRA on a bf16 base model.

The frozen weights are bf16; LoRA weights and the heads stay fp32 (AdamW steps on bf16 weights lose
the small updates). Left alone, PEFT casts each LoRA input up to fp32 — a copy of every q/k/v/o
input, kept for backward — and runs the LoRA matmuls in fp32. Under autocast the LoRA matmuls run
in bf16 against the fp32 master weights (HF Trainer's `bf16=True` does the same), with PEFT's
upcast switched off for the forward. Measured on the 2-core AMX CPU, LoRA r=16 q/k/v/o, SmolLM2-135M:
+8% tokens/s at batch 4×256 and −0.9 GiB peak RSS at batch 8×384 (BENCHMARKS.md).

fp16 bases are left as they were: fp16 gradients need loss scaling, which this loop does not do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def autocast_dtype(model: nn.Module) -> torch.dtype | None:
    """bf16 when the frozen weights are bf16 and some trainable weight is wider, else None."""
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()}
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    if frozen == {torch.bfloat16} and trainable - {torch.bfloat16}:
        return torch.bfloat16
    return None


class LoraAutocast:
    """`with amp():` around a training forward; a no-op for models `autocast_dtype` rejects."""

    def __init__(self, model: nn.Module):
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.model = model
        self.dtype = autocast_dtype(model)
        self.layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)] if self.dtype else []

    @property
    def device_type(self) -> str:
        # read at each forward: the trainer builds this before accelerate moves the model to its device
        return next(self.model.parameters()).device.type

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if self.dtype is None:
            yield
            return
        saved = [m.cast_input_dtype_enabled for m in self.layers]
        for m in self.layers:
            m.cast_input_dtype_enabled = False
        try:
            with torch.autocast(self.device_type, dtype=self.dtype):
                yield
        finally:
            for m, v in zip(self.layers, saved, strict=True):
                m.cast_input_dtype_enabled = v
