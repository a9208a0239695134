"""GSM8K: local JSONL (question, answer) or the hub release (openai/gsm8k, config "main")."""

from __future__ import annotations

import random
import re
from pathlib import Path

from tunesmith.data.schema import Example
from tunesmith.errors import DataError
from tunesmith.io import read_jsonl, write_jsonl

CALC = re.compile(r"<<[^>]*>>")


def load_records(ref: str, split: str = "train") -> list[dict]:
    """Records with `question` and `answer` from a JSONL path or a hub id.

    Every answer must hold its '#### N' line: checked here, so a bad record fails the run before
    anything is written rather than after training.
    """
    if ref.endswith((".jsonl", ".json")) or Path(ref).exists():
        rows = read_jsonl(ref, required=("question", "answer"))
    elif ref.count("/") == 1:
        from tunesmith.data.hub import load_hub_dataset

        ds = load_hub_dataset("GSM8K", ref, "main", split=split)
        rows = [{"question": r["question"], "answer": r["answer"]} for r in ds]
    else:
        raise DataError(f"GSM8K data not found: {ref}")
    for i, r in enumerate(rows, 1):
        if not isinstance(r["question"], str) or not isinstance(r["answer"], str) or "####" not in r["answer"]:
            raise DataError(
                f"{ref}: record {i}: needs string 'question' and 'answer' fields, the answer ending in a '#### N' line"
            )
    return rows


def gold_answer(answer: str) -> str:
    if "####" not in answer:
        raise DataError(f"GSM8K answer has no '#### N' line: {answer[:60]!r}")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def clean_solution(answer: str) -> str:
    """The worked solution without calculator annotations, ending in '#### N'."""
    return CALC.sub("", answer).strip()


def to_example(rec: dict) -> Example:
    return Example(
        messages=[
            {"role": "user", "content": rec["question"]},
            {"role": "assistant", "content": clean_solution(rec["answer"])},
        ],
        source="gsm8k",
        meta={"gold": gold_answer(rec["answer"])},
    )


def fewshot_pool(train: list[dict], size: int = 8, seed: int = 42) -> tuple[list[dict], list[dict]]:
    """Draw a fixed few-shot pool and return (pool, train without the pool).

    Removal is by question text, so a duplicate of a pool question elsewhere in the file cannot
    leak into training either.
    """
    if size > len(train):
        raise DataError(f"few-shot pool of {size} needs at least {size} training records, got {len(train)}")
    idx = random.Random(seed).sample(range(len(train)), size)
    pool = [train[i] for i in idx]
    questions = {r["question"].strip() for r in pool}
    rest = [r for r in train if r["question"].strip() not in questions]
    return pool, rest


def holdout(train: list[dict], size: int, seed: int, exclude: list[dict] = ()) -> tuple[list[dict], list[dict]]:
    """A seeded validation set carved from training records: (validation, train without it).

    Questions also in `exclude` (the test file) are never drawn, and every copy of a drawn question
    leaves training, as for the few-shot pool.
    """
    banned = {r["question"].strip() for r in exclude}
    eligible = [i for i, r in enumerate(train) if r["question"].strip() not in banned]
    if size >= len(eligible):
        raise DataError(
            f"a validation set of {size} needs more than {size} training records, got {len(eligible)} "
            "(set data.gsm8k.validation_size lower)"
        )
    validation = [train[i] for i in sorted(random.Random(seed).sample(eligible, size))]
    questions = {r["question"].strip() for r in validation}
    return validation, [r for r in train if r["question"].strip() not in questions]


def fewshot_turns(pool: list[dict], k: int) -> list[dict]:
    """The first k pool examples as prior chat turns."""
    turns: list[dict] = []
    for r in pool[:k]:
        turns += [
            {"role": "user", "content": r["question"]},
            {"role": "assistant", "content": clean_solution(r["answer"])},
        ]
    return turns


def save_pool(pool: list[dict], path: str | Path) -> None:
    write_jsonl(path, pool)
