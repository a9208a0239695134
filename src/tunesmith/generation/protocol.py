"""What every generation backend offers (`hf.HFGenerator`, `vllm.VLLMGenerator`); callers get one
from `factory.make_generator` and never ask which backend they hold."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

OnBatch = Callable[[list[int], list[str]], None]


class Generator(Protocol):
    tokenizer: object
    system_prompt: str | None
    max_new_tokens: int
    eos_ids: list[int]  # generation stops at any of these

    def chat(
        self,
        conversations: Sequence[list[dict]],
        max_new_tokens: int | None = None,
        description: str = "generating",
        on_batch: OnBatch | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[str]:
        """Replies to chat conversations (each a message list ending with a user turn), in the
        caller's order; greedy unless `temperature` > 0 (then seeded sampling). `on_batch(indices,
        texts)` is called as each chunk finishes (resumable outputs rely on it)."""
        ...

    def stream(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
    ) -> Stream:
        """One reply to a tokenized prompt, yielded as text pieces while it is generated."""
        ...

    def use_adapter(self, adapter_dir) -> None:
        """Replies from now on come from this saved adapter (a checkpoint of the trained one)."""
        ...

    def disable_adapter(self) -> AbstractContextManager:
        """Base-model replies inside the block (the adapter switched off)."""
        ...


class Stream(Protocol):
    """Text pieces of one reply; after iteration: the generated token count and why it stopped."""

    completion_tokens: int
    finish_reason: str  # "stop" (an EOS id), "length" (max_new_tokens) or "cancelled"

    def __iter__(self) -> Iterator[str]: ...

    def cancel(self) -> None: ...


def think_prefixes(prompt_texts: Sequence[str]) -> list[str]:
    """What each reply gets in front of the generated text: the think tag its prompt opened (DeepSeek-R1
    distills prefill `<think>\n`), so split_reasoning reads an unfinished think block as reasoning, never
    as the answer. Both backends use it, so a reply reads the same whichever generated it."""
    from tunesmith.data.reasoning import THINK_OPEN, prompt_opens_think

    return [THINK_OPEN if prompt_opens_think(t) else "" for t in prompt_texts]


def eos_token_ids(tokenizer, generation_eos: int | list[int] | None = None) -> list[int]:
    """The tokenizer's EOS plus the generation config's (chat models often end turns with a token
    that is not the tokenizer's EOS, e.g. <|im_end|> or <|eot_id|>)."""
    eos = {tokenizer.eos_token_id}
    eos |= set(generation_eos) if isinstance(generation_eos, list) else {generation_eos}
    return sorted(e for e in eos if e is not None)
