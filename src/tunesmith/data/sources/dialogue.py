"""Dialogue → training examples, shared by the empathy dialogue sources (ESConv, EmpatheticDialogues)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from tunesmith.data.schema import Example

K = TypeVar("K")


def history_window(history: list[dict[str, str]], history_turns: int) -> list[dict[str, str]]:
    """Copies of the last `history_turns` messages, starting at a user message.

    A leading assistant message is dropped (prompts start with the user); when that leaves no user
    message, the window reaches back to the latest one. Shared by the empathy dialogue loaders.
    """
    start = max(0, len(history) - history_turns)
    while start < len(history) and history[start]["role"] != "user":
        start += 1
    if start == len(history):  # the window held no user message: keep the latest one
        start = max(i for i, m in enumerate(history) if m["role"] == "user")
    return [dict(m) for m in history[start:]]


def dialogue_examples(
    turns: Iterable[tuple[str, str, K]], history_turns: int, make: Callable[[K, list[dict]], Example]
) -> list[Example]:
    """One example per assistant turn that answers something the user said: `make(key, messages)`
    gets the turn's key and the history window plus that reply. `turns` are (role, text, key).

    Empty turns are skipped (merging one would only add a blank line); consecutive turns of one role
    are merged, which keeps roles alternating as chat templates require.
    """
    history: list[dict[str, str]] = []
    out: list[Example] = []
    for role, text, key in turns:
        if not text:
            continue
        if role == "assistant" and any(m["role"] == "user" for m in history):
            out.append(make(key, [*history_window(history, history_turns), {"role": "assistant", "content": text}]))
        if history and history[-1]["role"] == role:
            history[-1]["content"] += "\n" + text
        else:
            history.append({"role": role, "content": text})
    return out
