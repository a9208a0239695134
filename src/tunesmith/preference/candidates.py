"""Prompts and candidate replies for preference pairs (see the package docstring for the whole flow)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tunesmith.data.reasoning import split_reasoning
from tunesmith.errors import DataError
from tunesmith.io import read_jsonl


# ---- prompts and candidates -----------------------------------------------------------------
@dataclass
class PromptItem:
    id: str
    messages: list[dict]  # the conversation so far, ending with a user turn
    meta: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class Candidate:
    source: str
    text: str  # the answer: what judges score and DPO trains on
    reasoning: str = ""  # a reasoning model's think block, kept for the record


def messages_of(value, role: str, where: str) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: empty text")
        return [{"role": role, "content": value}]
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict)
            and isinstance(m.get("content"), str)
            and m.get("role") in ("system", "user", "assistant")
            for m in value
        )
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(f"{where}: expected a string or a list of {{role, content}} messages")


def default_prompts_path() -> Path:
    return Path(str(resources.files("tunesmith") / "resources" / "dpo_prompts.jsonl"))


def load_prompt_items(path: str | Path | None = None, limit: int | None = None) -> list[PromptItem]:
    """JSONL with `prompt` (a string or a message list ending with a user turn) and optional `id`;
    None: the held-in set shipped with tunesmith (ordinary emotional-support situations)."""
    p = Path(path) if path else default_prompts_path()
    items = []
    for i, row in enumerate(read_jsonl(p, required=("prompt",)), 1):
        msgs = messages_of(row["prompt"], "user", f"{p}:{i}: prompt")
        if msgs[-1]["role"] != "user":
            raise DataError(f"{p}:{i}: the prompt must end with a user turn")
        items.append(
            PromptItem(
                str(row.get("id", f"{p.stem}-{i}")), msgs, {k: v for k, v in row.items() if k not in ("id", "prompt")}
            )
        )
    if not items:
        raise DataError(f"{p}: no prompts")
    if len({it.id for it in items}) != len(items):
        raise DataError(f"{p}: duplicate ids")
    return items[:limit] if limit else items


# ---- generation -----------------------------------------------------------------------------
def generate_candidates(
    items: list[PromptItem],
    gen,
    has_adapter: bool,
    max_new_tokens: int,
    samples: int = 0,
    temperature: float = 0.8,
    seed: int = 0,
    log=None,
) -> list[list[Candidate]]:
    """Greedy base and SFT replies (+ `samples` sampled SFT replies) per prompt.

    `gen` is a generation backend (`tunesmith.generation`); base replies come from inside its
    `disable_adapter()` block."""
    convs = [it.messages for it in items]
    cands: list[list[Candidate]] = [[] for _ in items]
    tuned = "sft" if has_adapter else "base"

    def add(source: str, texts: list[str], t0: float) -> None:
        for c, t in zip(cands, texts, strict=True):
            reasoning, answer = split_reasoning(t)
            c.append(Candidate(source, answer, reasoning))
        if log:
            log(f"candidates '{source}' done ({len(texts)} prompts, {time.perf_counter() - t0:.0f} s)")

    if has_adapter:
        t0 = time.perf_counter()
        with gen.disable_adapter():
            add("base", gen.chat(convs, max_new_tokens, description="candidates (base)"), t0)
    t0 = time.perf_counter()
    add(tuned, gen.chat(convs, max_new_tokens, description=f"candidates ({tuned})"), t0)
    for k in range(1, samples + 1):
        t0 = time.perf_counter()
        add(
            f"{tuned}-sample-{k}",
            gen.chat(convs, max_new_tokens, description="sampling", temperature=temperature, seed=seed + k),
            t0,
        )
    return cands


def candidate_rows(items: list[PromptItem], cands: list[list[Candidate]], scores=None) -> list[dict]:
    rows = []
    for i, (it, cs) in enumerate(zip(items, cands, strict=True)):
        sc = scores[i] if scores else None
        rows.append(
            {
                "id": it.id,
                "prompt": it.messages,
                **({"meta": it.meta} if it.meta else {}),
                "candidates": [
                    {
                        "source": c.source,
                        "text": c.text,
                        **({"reasoning": c.reasoning} if c.reasoning else {}),
                        **(sc[j] if sc else {}),
                    }
                    for j, c in enumerate(cs)
                ],
            }
        )
    return rows


def load_candidates(path: str | Path) -> tuple[list[PromptItem], list[list[Candidate]]]:
    """A candidates file written by `tunesmith pairs` (to judge again, or label by hand)."""
    p = Path(path)
    items, cands = [], []
    for i, row in enumerate(read_jsonl(p, required=("id", "prompt", "candidates")), 1):
        items.append(
            PromptItem(
                str(row["id"]), messages_of(row["prompt"], "user", f"{p}:{i}: prompt"), dict(row.get("meta") or {})
            )
        )
        try:
            cands.append(
                [Candidate(str(c["source"]), str(c["text"]), str(c.get("reasoning") or "")) for c in row["candidates"]]
            )
        except (TypeError, KeyError):
            raise DataError(f"{p}:{i}: candidates must be a list of {{source, text}}") from None
    return items, cands
