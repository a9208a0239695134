"""GSM8K answer extraction and scoring, with lm-evaluation-harness's definitions (gsm8k task v3).

strict   = lm-eval `strict-match`: the first match of `#### (\\-?[0-9\\.\\,]+)` (one space after ####,
           no `$`), else "[invalid]".
flexible = lm-eval `flexible-extract`: the last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)` (the non-empty
           group of that match), else "[invalid]".
Both then get the task's exact-match cleanup, applied to the prediction and to the reference answer
alike: the regexes `,`, `\\$`, `(?s).*#### `, `\\.$` removed in that order, then lower case. A prediction
is correct when the cleaned strings are equal (so "18.0" is not "18", as in lm-eval).

lenient  = tunesmith's own parser, reported under its own name: the first `#### N` allowing `$`, no
           space or `-$`, compared numerically ("18.0" == "18"); it credits formats lm-eval rejects.

All modes first drop a leading `<think>…</think>` block (a reasoning model's thoughts) the way lm-eval's
HF backend does with `think_end_token="</think>"`: keep what follows the last `</think>` (so it also works
when the template put `<think>` in the prompt); text without `</think>` (unfinished thoughts) stays whole.
"""

from __future__ import annotations

import re
from typing import Literal

INVALID = "[invalid]"
Mode = Literal["strict", "flexible", "lenient"]
MODES: tuple[Mode, ...] = ("strict", "flexible", "lenient")

# lm_eval/tasks/gsm8k/gsm8k.yaml (metadata.version 3.0): filter_list and metric_list.regexes_to_ignore
STRICT_MATCH = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_EXTRACT = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
REGEXES_TO_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")

LENIENT = re.compile(r"####\s*\$?\s*(-?[$0-9.,]*[0-9])")
THINK_END = "</think>"


def strip_think(text: str) -> str:
    return text.split(THINK_END)[-1].lstrip() if THINK_END in text else text


def regex_filter(text: str, pattern: re.Pattern, group_select: int) -> str:
    """lm-eval's RegexFilter: findall, pick one match, its first non-empty group, strip; else the fallback."""
    found = pattern.findall(text)
    if not found:
        return INVALID
    match = found[group_select]
    if isinstance(match, tuple):  # alternation: findall returns every group, the unused ones empty
        match = next((m for m in match if m), INVALID)
    return match.strip()


def exact_match_clean(s: str) -> str:
    """lm-eval gsm8k's exact_match normalisation (regexes_to_ignore, then ignore_case)."""
    for pattern in REGEXES_TO_IGNORE:
        s = re.sub(pattern, "", s)
    return s.lower()


def _lenient_clean(s: str) -> str:
    s = s.strip().replace(",", "").replace("$", "").rstrip(".")
    return s if re.search(r"[0-9]", s) else INVALID  # "-$5" leaves "-5"; a lone "-" is no number


def extract_answer(text: str, mode: Mode = "strict") -> str:
    """The answer as the metric compares it: filtered and cleaned, or "[invalid]"."""
    text = strip_think(text)
    if mode == "strict":
        raw = regex_filter(text, STRICT_MATCH, 0)
    elif mode == "flexible":
        raw = regex_filter(text, FLEXIBLE_EXTRACT, -1)
    elif mode == "lenient":
        m = LENIENT.search(text)
        return _lenient_clean(m.group(1)) if m else INVALID
    else:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return INVALID if raw == INVALID else exact_match_clean(raw)


def reference(answer: str) -> str:
    """The gold answer from a GSM8K `answer` field (the full solution ending in '#### N'), cleaned as lm-eval does."""
    return exact_match_clean(answer)


def is_correct(pred: str, gold: str, mode: Mode = "strict") -> bool:
    """`pred` from extract_answer (already cleaned: the cleanup is not idempotent, "5.." → "5." → "5");
    `gold` the GSM8K answer field or its number. strict/flexible: lm-eval's exact match; lenient: numeric."""
    if pred == INVALID:
        return False
    ref = reference(gold)  # the answer field's final number (a bare number passes through)
    if mode != "lenient":
        return pred == ref
    try:
        return abs(float(pred) - float(ref)) < 1e-6
    except ValueError:
        return pred == ref
