"""GSM8K answer extraction and scoring.

strict: the first `#### N` in the output (the format the training data teaches).
flexible: the last number anywhere in the output (credits a right answer in free form).
Both clean commas, `$` and a trailing period, and return "[invalid]" when nothing matches.
"""

from __future__ import annotations

import re
from typing import Literal

INVALID = "[invalid]"
STRICT = re.compile(r"####\s*\$?\s*(-?[$0-9.,]*[0-9])")
NUMBER = re.compile(r"-?\$?[0-9][0-9,]*(?:\.[0-9]+)?|-?\$?\.[0-9]+")


def clean(s: str) -> str:
    s = s.strip().replace(",", "").replace("$", "").rstrip(".")
    # "-$5" leaves "-5"; a lone "-" is no number
    return s if re.search(r"[0-9]", s) else INVALID


def extract_answer(text: str, mode: Literal["strict", "flexible"] = "strict") -> str:
    if mode == "strict":
        m = STRICT.search(text)
        return clean(m.group(1)) if m else INVALID
    if mode == "flexible":
        found = NUMBER.findall(text)
        return clean(found[-1]) if found else INVALID
    raise ValueError(f"mode must be 'strict' or 'flexible', got {mode!r}")


def is_correct(pred: str, gold: str) -> bool:
    if pred == INVALID:
        return False
    try:
        return abs(float(pred) - float(gold)) < 1e-6
    except ValueError:
        return pred == gold
