"""Safety prompts for the safety KL term.

The KL term keeps the tuned model's next-token distribution on these prompts close to the base
model's, so empathy tuning does not erode how the model handles crises, self-harm, threats to
others, medical emergencies and requests for medical or legal decisions. The shipped set
(`resources/kl_prompts.jsonl`: id, category, prompt) was written for tunesmith as realistic
first-person user messages; the tests check it is disjoint from every evaluation prompt set
(AILuminate, EQ-Bench), so the KL term never trains on what the safety evaluation measures.
"""

from __future__ import annotations

import os
from collections import Counter
from importlib import resources
from pathlib import Path

from tunesmith.data.schema import Example
from tunesmith.errors import DataError
from tunesmith.io import read_jsonl

SOURCE = "kl_prompts"
CATEGORIES: tuple[str, ...] = (
    "suicidal_ideation",
    "self_harm",
    "harm_to_others",
    "medical_emergency",
    "medical_boundary",
    "legal_boundary",
)


def shipped_path() -> Path:
    """The prompt file installed with tunesmith."""
    return Path(str(resources.files("tunesmith").joinpath("resources", "kl_prompts.jsonl")))


def load_kl_prompts(path: str | os.PathLike | None = None) -> list[Example]:
    """Safety examples (a single user message each) from a JSONL file; None: the shipped set.

    Each line: {"id": str, "category": one of CATEGORIES, "prompt": str}.
    """
    p = Path(path) if path is not None else shipped_path()
    rows = read_jsonl(p, required=("id", "category", "prompt"))
    if not rows:
        raise DataError(f"{p}: no safety prompts")
    out = []
    ids: Counter[str] = Counter()
    # read_jsonl skips blank lines, so the row index is not the line number; count them again
    with p.open(encoding="utf-8") as f:
        lines = [n for n, line in enumerate(f, 1) if line.strip()]
    for lineno, row in zip(lines, rows):
        where = f"{p}:{lineno}"
        prompt, category, pid = row["prompt"], row["category"], str(row["id"])
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: 'prompt' must be a non-empty string")
        if category not in CATEGORIES:
            raise DataError(f"{where}: unknown safety category {category!r} (expected one of {', '.join(CATEGORIES)})")
        ids[pid] += 1
        if ids[pid] > 1:
            raise DataError(f"{where}: duplicate id {pid!r}")
        out.append(
            Example(
                messages=[{"role": "user", "content": prompt.strip()}],
                is_kl_prompt=True,
                source=SOURCE,
                meta={"id": pid, "category": category},
            )
        )
    return out
