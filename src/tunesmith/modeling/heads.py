"""Emotion and strategy heads: small MLPs on the LM's hidden states.

Pooling default: `last_prompt_token`, the hidden state at the last token before the reply. Under
causal attention it is the only position that has read the whole prompt, it is the state the LM
uses to choose the reply's first token (so the heads shape exactly the representation that
decides how to answer), and it costs nothing extra: it comes out of the same forward pass.
`mean_last_user` averages the last user message's tokens instead (less sensitive to template tokens).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tunesmith.data.taxonomy import EMOTIONS, STRATEGIES

HEADS_FILE = "heads.safetensors"


def mlp(hidden: int, inner: int, out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, inner), nn.ReLU(), nn.Dropout(dropout), nn.Linear(inner, out))


class Heads(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        emotion: bool = True,
        strategy: bool = True,
        dropout: float = 0.1,
        pooling: str = "last_prompt_token",
    ):
        super().__init__()
        self.hidden_size, self.pooling, self.dropout = hidden_size, pooling, dropout
        self.emotion = mlp(hidden_size, 512, len(EMOTIONS), dropout) if emotion else None
        self.strategy = mlp(hidden_size, 256, len(STRATEGIES), dropout) if strategy else None

    def pool(self, hidden: torch.Tensor, pool_index: torch.Tensor, user_span: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if self.pooling == "last_prompt_token":
            return hidden[rows, pool_index].float()
        pos = torch.arange(hidden.shape[1], device=hidden.device)[None, :]
        m = ((pos >= user_span[:, :1]) & (pos < user_span[:, 1:])).to(hidden.dtype)
        return ((hidden * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)).float()

    def forward(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        if self.emotion is not None:
            out["emotion"] = self.emotion(pooled)
        if self.strategy is not None:
            out["strategy"] = self.strategy(pooled)
        return out

    def config(self) -> dict:
        return {
            "hidden_size": self.hidden_size,
            "emotion": self.emotion is not None,
            "strategy": self.strategy is not None,
            "dropout": self.dropout,
            "pooling": self.pooling,
        }

    def save(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, d / HEADS_FILE, metadata={k: str(v) for k, v in self.config().items()})

    @classmethod
    def load(cls, directory: str | Path) -> Heads | None:
        from safetensors import safe_open
        from safetensors.torch import load_file

        f = Path(directory) / HEADS_FILE
        if not f.is_file():
            return None
        with safe_open(f, "pt") as fh:
            meta = fh.metadata()
        heads = cls(
            int(meta["hidden_size"]),
            meta["emotion"] == "True",
            meta["strategy"] == "True",
            float(meta["dropout"]),
            meta["pooling"],
        )
        heads.load_state_dict(load_file(f))
        return heads.eval()
