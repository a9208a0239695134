"""The one example type every dataset source produces."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Example:
    """A chat example.

    messages: chat turns ({"role": "system"|"user"|"assistant", "content": str}); the LM loss
        covers the assistant turns only. Empty for emotion-only examples (no LM loss) – then `text`
        holds the utterance the emotion head reads.
    emotion: GoEmotions label id (0..27, see `taxonomy.EMOTIONS`) or None.
    strategy: ESConv strategy id (0..7, see `taxonomy.STRATEGIES`) or None.
    is_kl_prompt: a safety prompt for the kl term.
    source: dataset name, e.g. "esconv", "goemotions", "empathetic_dialogues", "gsm8k", "kl_prompts".
    """

    messages: list[dict[str, str]] = field(default_factory=list)
    emotion: int | None = None
    strategy: int | None = None
    is_kl_prompt: bool = False
    source: str = ""
    text: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def has_lm(self) -> bool:
        return any(m["role"] == "assistant" for m in self.messages) and not self.is_kl_prompt
