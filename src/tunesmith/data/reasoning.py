"""Reasoning vs answer in a reply: `<think>…</think>` blocks (Qwen3, DeepSeek-R1 and their distills).

A reasoning model's reply is "<think>reasoning</think>answer". Scorers (GSM8K extraction, EQ-Bench parsing, the
guard, the crisis layer, DPO judges) must read the answer only; a reply that spent its whole token budget inside
the think block has no answer at all, and its reasoning must not be parsed as one.
"""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_reasoning(text: str, open_in_prompt: bool = False) -> tuple[str, str]:
    """(reasoning, answer) of a reply; ("", text) unchanged when it has no think block.

    Handles a leading `<think>…</think>` block, a reply that starts inside the block because the prompt ended
    with `<think>` (text containing only the closing tag), and an unterminated block (all reasoning, no answer).
    `open_in_prompt`: the prompt ended inside an open think block, so a reply without `</think>` is all reasoning.
    """
    close = text.find(THINK_CLOSE)
    stripped = text.lstrip()
    if close < 0:
        if stripped.startswith(THINK_OPEN):
            return stripped[len(THINK_OPEN) :].strip(), ""
        if open_in_prompt:
            return text.strip(), ""
        return "", text
    head = text[:close]
    opened = head.find(THINK_OPEN)
    if opened >= 0:
        if head[:opened].strip():  # a think tag in the middle of an answer is not a reasoning block
            return "", text
        head = head[opened + len(THINK_OPEN) :]
    return head.strip(), text[close + len(THINK_CLOSE) :].strip()


def prompt_opens_think(prompt_text: str) -> bool:
    """True when a rendered prompt ends inside an open think block (e.g. DeepSeek-R1 distills prefill `<think>\\n`);
    Qwen3 with enable_thinking=false closes it (`<think>\\n\\n</think>`), so its replies start with the answer."""
    return prompt_text.rfind(THINK_OPEN) > prompt_text.rfind(THINK_CLOSE)


def message_reasoning(message: dict) -> tuple[str, str]:
    """(reasoning, answer) of a training message: its `reasoning_content` field, else an inline think block."""
    content = message.get("content") or ""
    rc = message.get("reasoning_content")
    if isinstance(rc, str) and rc.strip():
        return rc, content
    if THINK_CLOSE in content:
        return split_reasoning(content)
    return "", content
